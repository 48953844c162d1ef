module switchyard.local/bench/peer/scale

go 1.26.0
