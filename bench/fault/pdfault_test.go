package fault

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// P/D under faults: 2 prefill and 2 decode simulator processes behind a P/D router. A
// decode worker killed with streams in flight ends them in-band; a prefill worker killed
// under load costs nothing (its legs go to the other prefill worker, or decode prefills
// itself); both come back. Nothing is lost.
func TestPDFaults(t *testing.T) {
	t.Parallel()
	syBin, routerBin := binaries(t)
	c := newClient(t)
	p := []*proc{startSim(t, syBin, "p0", 0, "--role", "prefill"), startSim(t, syBin, "p1", 0, "--role", "prefill")}
	d := []*proc{startSim(t, syBin, "d0", 0, "--role", "decode"), startSim(t, syBin, "d1", 0, "--role", "decode")}
	args := []string{"--vllm-pd-disaggregation",
		"--prefill", "http://" + p[0].addr, "--prefill", "http://" + p[1].addr,
		"--decode", "http://" + d[0].addr, "--decode", "http://" + d[1].addr}
	rt := startRouterProc(t, routerBin, append(args, faultRouterFlags...)...)
	for _, s := range append(append([]*proc(nil), p...), d...) {
		waitHealth(t, c, rt, "http://"+s.addr, true, 15*time.Second)
	}
	ids := make([]string, 16)
	for i := range ids {
		ids[i] = fmt.Sprintf("pd-rollout-%d", i)
	}
	l := newLoad(c, rt.addr, ids)
	l.start()
	halted := false
	t.Cleanup(func() {
		if !halted {
			l.halt()
		}
	})
	all := map[string][]int{"": nil}
	for i := range ids {
		all[""] = append(all[""], i)
	}
	anyWorker := func(int, string) bool { return true }
	waitServed(t, l, all, []string{""}, time.Time{}, 2, anyWorker, 20*time.Second, "P/D warm-up")

	// Kill the decode worker serving the first long stream; streams elsewhere finish.
	long := startLongStreams(t, c, rt.addr, ids, []int{0, 1, 2, 3}, 1000)
	for _, ls := range long {
		if ls.worker != "d0" && ls.worker != "d1" {
			t.Fatalf("stream for %s answered by %q, want a decode worker", ls.session, ls.worker)
		}
	}
	victim := 0
	if long[0].worker == "d1" {
		victim = 1
	}
	d[victim].signal(t, syscall.SIGKILL)
	d[victim].waitExit(t, 5*time.Second)
	var streamed []result
	for _, ls := range long {
		r := <-ls.res
		streamed = append(streamed, r)
		switch {
		case ls.worker == fmt.Sprintf("d%d", victim) && !(r.inBand && r.outcome == clearError):
			t.Errorf("stream on killed decode worker %s ended %s (%s); want an in-band error and data: [DONE]", ls.worker, r.outcome, r.detail)
		case ls.worker != fmt.Sprintf("d%d", victim) && r.outcome != succeeded:
			t.Errorf("stream on healthy decode worker %s ended %s (%s)", ls.worker, r.outcome, r.detail)
		}
	}
	waitHealth(t, c, rt, "http://"+d[victim].addr, false, 10*time.Second)
	down := time.Now()
	waitServed(t, l, all, []string{""}, down, 1, anyWorker, 15*time.Second, "every session served without the killed decode worker")

	// Kill a prefill worker under load.
	p[0].signal(t, syscall.SIGKILL)
	p[0].waitExit(t, 5*time.Second)
	waitHealth(t, c, rt, "http://"+p[0].addr, false, 10*time.Second)
	down = time.Now()
	waitServed(t, l, all, []string{""}, down, 2, anyWorker, 15*time.Second, "every session served without the killed prefill worker")

	// Both come back.
	d[victim] = startSim(t, syBin, fmt.Sprintf("d%d", victim), portOf(t, d[victim].addr), "--role", "decode")
	p[0] = startSim(t, syBin, "p0", portOf(t, p[0].addr), "--role", "prefill")
	for _, s := range []*proc{d[victim], p[0]} {
		waitHealth(t, c, rt, "http://"+s.addr, true, 15*time.Second)
	}
	back := time.Now()
	victimName := fmt.Sprintf("d%d", victim)
	eventually(t, 15*time.Second, victimName+" serves again", func() bool {
		for _, r := range l.snapshot() {
			if r.outcome == succeeded && r.worker == victimName && r.sentAt.After(back) {
				return true
			}
		}
		return false
	})

	l.halt()
	halted = true
	rs := l.snapshot()
	reportLoss(t, "P/D fault figures", rs, streamed, ids)
}
