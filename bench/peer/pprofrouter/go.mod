module switchyard.local/bench/peer/pprofrouter

go 1.26.0
