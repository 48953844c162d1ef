package fault

import (
	"encoding/json"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// faultRouterFlags make failures visible within a second or two: fast active checks, a
// breaker that opens after three failures and half-opens after one second, and 2 s
// header and stream-idle timeouts for the hung worker.
var faultRouterFlags = []string{
	"--policy", "consistent_hash",
	"--health-check-interval-secs", "0.5", "--health-check-timeout-secs", "1",
	"--health-failure-threshold", "2", "--health-success-threshold", "1",
	"--cb-failure-threshold", "3", "--cb-timeout-duration-secs", "1",
	"--stream-idle-timeout-secs", "2", "--response-header-timeout-secs", "2",
	"--retry-initial-backoff-ms", "10", "--retry-max-backoff-ms", "100",
	"--max-concurrent-requests", "512", "--queue-size", "512", "--queue-timeout-secs", "5",
}

// longTokens makes a stream last 20 s at the simulator's pace: still running when the
// fault hits it.
const longTokens = 4000

// sessionsPerWorker is how many load sessions each worker owns at the start.
const sessionsPerWorker = 6

// faultWindow is when a worker was faulted: from the injection until it served all its
// sessions again with a closed circuit. Outside its windows a worker's sessions must be
// served by it and by no other.
type faultWindow struct {
	worker   string
	from, to time.Time
}

// The fault-injection suite: 4 simulator processes behind one router process, a steady
// closed loop of multi-turn sessions, and one fault per worker in turn: SIGKILL (then a
// restart on the same port), SIGSTOP (then SIGCONT), a flapping health check, and a
// slowdown; then all four at once. Nothing may be lost, streams cut by a fault end
// in-band, only the faulted workers' sessions move, and each worker comes back.
func TestFaultInjection(t *testing.T) {
	t.Parallel() // alongside the P/D fault and slowloris tests
	syBin, routerBin := binaries(t)
	c := newClient(t)
	names := []string{"w0", "w1", "w2", "w3"}
	sims := make([]*proc, len(names))
	urls := make([]string, len(names))
	for i, n := range names {
		sims[i] = startSim(t, syBin, n, 0)
		urls[i] = "http://" + sims[i].addr
	}
	args := append([]string{"--worker-urls"}, urls...)
	rt := startRouterProc(t, routerBin, append(args, faultRouterFlags...)...)
	for _, u := range urls {
		waitHealth(t, c, rt, u, true, 15*time.Second)
	}

	ids, owner := pickSessions(t, c, rt.addr, names)
	l := newLoad(c, rt.addr, ids)
	l.start()
	halted := false
	t.Cleanup(func() {
		if !halted {
			l.halt()
		}
	})
	byWorker := map[string][]int{}
	for i := range ids {
		byWorker[owner[i]] = append(byWorker[owner[i]], i)
	}
	// Steady state: every session served twice, by its owner (checked at the end).
	waitServed(t, l, byWorker, names, time.Time{}, 2, func(i int, w string) bool { return true }, 20*time.Second, "warm-up")

	var windows []faultWindow
	var streamed []result // the long streams cut by faults, counted with the load

	// w0: SIGKILL with streams in flight, then a restart on the same port.
	{
		w, url := "w0", urls[0]
		from := time.Now()
		long := startLongStreams(t, c, rt.addr, ids, byWorker[w][:2], longTokens)
		requireOn(t, long, w)
		sims[0].signal(t, syscall.SIGKILL)
		sims[0].waitExit(t, 5*time.Second)
		streamed = append(streamed, checkLongStreams(t, long, w+" killed")...)
		waitHealth(t, c, rt, url, false, 10*time.Second)
		down := time.Now()
		waitServed(t, l, byWorker, []string{w}, down, 1, func(_ int, got string) bool { return got != w }, 15*time.Second, w+"'s sessions moved")
		sims[0] = startSim(t, syBin, w, portOf(t, sims[0].addr))
		waitHealth(t, c, rt, url, true, 15*time.Second)
		back := time.Now()
		waitServed(t, l, byWorker, []string{w}, back, 1, func(_ int, got string) bool { return got == w }, 15*time.Second, w+" serves again")
		waitCircuitClosed(t, c, rt, url, 15*time.Second)
		windows = append(windows, faultWindow{w, from, time.Now()})
		t.Logf("%s: killed with 2 streams in flight; down after %v; restarted; serving again %v later",
			w, down.Sub(from).Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
	}

	// w1: SIGSTOP with streams in flight (the router's idle timeout cuts them), SIGCONT.
	{
		w, url := "w1", urls[1]
		from := time.Now()
		long := startLongStreams(t, c, rt.addr, ids, byWorker[w][:2], longTokens)
		requireOn(t, long, w)
		sims[1].signal(t, syscall.SIGSTOP)
		streamed = append(streamed, checkLongStreams(t, long, w+" hung")...)
		waitHealth(t, c, rt, url, false, 10*time.Second)
		down := time.Now()
		waitServed(t, l, byWorker, []string{w}, down, 1, func(_ int, got string) bool { return got != w }, 15*time.Second, w+"'s sessions moved")
		sims[1].signal(t, syscall.SIGCONT)
		waitHealth(t, c, rt, url, true, 15*time.Second)
		back := time.Now()
		waitServed(t, l, byWorker, []string{w}, back, 1, func(_ int, got string) bool { return got == w }, 15*time.Second, w+" serves again")
		waitCircuitClosed(t, c, rt, url, 15*time.Second)
		windows = append(windows, faultWindow{w, from, time.Now()})
		t.Logf("%s: stopped with 2 streams in flight; down after %v; continued; serving again %v later",
			w, down.Sub(from).Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
	}

	// w2: the health check flaps twice; the worker itself keeps answering.
	{
		w, url := "w2", urls[2]
		from := time.Now()
		for flap := 0; flap < 2; flap++ {
			setFault(t, c, sims[2].addr, `{"health_fail":true}`)
			waitHealth(t, c, rt, url, false, 10*time.Second)
			down := time.Now()
			waitServed(t, l, byWorker, []string{w}, down, 1, func(_ int, got string) bool { return got != w }, 15*time.Second, w+"'s sessions moved")
			setFault(t, c, sims[2].addr, `{}`)
			waitHealth(t, c, rt, url, true, 10*time.Second)
			back := time.Now()
			waitServed(t, l, byWorker, []string{w}, back, 1, func(_ int, got string) bool { return got == w }, 15*time.Second, w+" serves again")
		}
		waitCircuitClosed(t, c, rt, url, 15*time.Second)
		windows = append(windows, faultWindow{w, from, time.Now()})
		t.Logf("%s: flapped twice", w)
	}

	// w3: eight times slower. Slow is not broken: it stays healthy and keeps its sessions
	// (no window: the end-of-run check holds its sessions to it throughout).
	{
		w, url := "w3", urls[3]
		setFault(t, c, sims[3].addr, `{"slow_factor":8}`)
		from := time.Now()
		waitServed(t, l, byWorker, []string{w}, from, 2, func(_ int, got string) bool { return got == w }, 20*time.Second, w+" serves while slow")
		if ws, err := routerWorkers(c, rt.addr); err != nil || !ws[url].IsHealthy || ws[url].CircuitState != "closed" {
			t.Errorf("slow %s taken out of rotation: %+v (err %v)", w, ws[url], err)
		}
		setFault(t, c, sims[3].addr, `{}`)
		t.Logf("%s: slowed 8x for %v", w, time.Since(from).Round(time.Millisecond))
	}

	// All four at once: w3, slow, is the only worker left and takes every session.
	{
		from := time.Now()
		long := startLongStreams(t, c, rt.addr, ids, append(byWorker["w0"][:1:1], byWorker["w1"][0]), longTokens)
		sims[0].signal(t, syscall.SIGKILL)
		sims[1].signal(t, syscall.SIGSTOP)
		setFault(t, c, sims[2].addr, `{"health_fail":true}`)
		setFault(t, c, sims[3].addr, `{"slow_factor":8}`)
		sims[0].waitExit(t, 5*time.Second)
		streamed = append(streamed, checkLongStreams(t, long, "w0 killed and w1 hung together")...)
		for _, u := range urls[:3] {
			waitHealth(t, c, rt, u, false, 10*time.Second)
		}
		down := time.Now()
		waitServed(t, l, byWorker, names[:3], down, 1, func(_ int, got string) bool { return got == "w3" }, 20*time.Second, "every session on w3")
		sims[0] = startSim(t, syBin, "w0", portOf(t, sims[0].addr))
		sims[1].signal(t, syscall.SIGCONT)
		setFault(t, c, sims[2].addr, `{}`)
		setFault(t, c, sims[3].addr, `{}`)
		for _, u := range urls {
			waitHealth(t, c, rt, u, true, 15*time.Second)
		}
		back := time.Now()
		waitServed(t, l, byWorker, names, back, 1, func(i int, got string) bool { return got == owner[i] }, 20*time.Second, "every session back on its owner")
		for _, u := range urls {
			waitCircuitClosed(t, c, rt, u, 15*time.Second)
		}
		for _, w := range names[:3] {
			windows = append(windows, faultWindow{w, from, time.Now()})
		}
		t.Logf("all at once: w0, w1, w2 down after %v; all back %v after recovery started",
			down.Sub(from).Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
	}

	l.halt()
	halted = true
	rs := l.snapshot()
	if int64(len(rs)) != l.sent.Load() {
		t.Errorf("recorded %d results for %d requests sent", len(rs), l.sent.Load())
	}
	reportLoss(t, "fault-injection figures", rs, streamed, ids)
	checkStickiness(t, rs, ids, owner, windows)
	select {
	case <-rt.done:
		t.Fatalf("router exited during the run:\n%s", rt.out)
	default:
	}
	for _, u := range urls {
		waitHealth(t, c, rt, u, true, 10*time.Second)
	}
}

// pickSessions finds session ids until each worker owns sessionsPerWorker of them, asking
// the router where each one goes.
func pickSessions(t *testing.T, c *http.Client, router string, names []string) ([]string, map[int]string) {
	t.Helper()
	per := map[string]int{}
	var ids []string
	owner := map[int]string{}
	for k := 0; k < 2000 && len(ids) < sessionsPerWorker*len(names); k++ {
		id := fmt.Sprintf("rollout-%d", k)
		body := `{"model":"sim-model","messages":[{"role":"user","content":"hello"}],"max_tokens":2}`
		r, _ := chatRequest(c, router, id, 0, []byte(body), false, nil)
		if r.outcome != succeeded {
			t.Fatalf("probe for %s: %s %s", id, r.outcome, r.detail)
		}
		if per[r.worker] < sessionsPerWorker {
			per[r.worker]++
			owner[len(ids)] = r.worker
			ids = append(ids, id)
		}
	}
	if len(ids) < sessionsPerWorker*len(names) {
		t.Fatalf("could not find %d sessions per worker: %v", sessionsPerWorker, per)
	}
	return ids, owner
}

// waitServed waits until every session owned by one of workers has had at least n
// successes sent after since and accepted by ok (given the session and the worker that
// answered).
func waitServed(t *testing.T, l *load, byWorker map[string][]int, workers []string, since time.Time, n int,
	ok func(session int, worker string) bool, within time.Duration, what string) {
	t.Helper()
	want := map[int]bool{}
	for _, w := range workers {
		for _, i := range byWorker[w] {
			want[i] = true
		}
	}
	eventually(t, within, what, func() bool {
		got := map[int]int{}
		for _, r := range l.snapshot() {
			if r.outcome == succeeded && want[r.session] && r.sentAt.After(since) && ok(r.session, r.worker) {
				got[r.session]++
			}
		}
		for i := range want {
			if got[i] < n {
				return false
			}
		}
		return true
	})
}

// waitHealth waits until the router's /workers shows url with the given health.
func waitHealth(t *testing.T, c *http.Client, rt *proc, url string, healthy bool, within time.Duration) {
	t.Helper()
	eventually(t, within, fmt.Sprintf("router to see %s healthy=%v", url, healthy), func() bool {
		ws, err := routerWorkers(c, rt.addr)
		return err == nil && ws[url].URL == url && ws[url].IsHealthy == healthy
	})
}

// waitCircuitClosed waits until the router's /workers shows url's circuit closed.
func waitCircuitClosed(t *testing.T, c *http.Client, rt *proc, url string, within time.Duration) {
	t.Helper()
	eventually(t, within, "circuit of "+url+" closed", func() bool {
		ws, err := routerWorkers(c, rt.addr)
		return err == nil && ws[url].CircuitState == "closed" && ws[url].IsHealthy
	})
}

// longStream is a stream started on a worker about to fail.
type longStream struct {
	session string
	worker  string // the worker streaming it
	res     chan result
}

// startLongStreams opens one long stream per session (tokens at the simulator's 5 ms
// pace) and returns once each has received its first event.
func startLongStreams(t *testing.T, c *http.Client, router string, ids []string, sessions []int, tokens int) []longStream {
	t.Helper()
	var out []longStream
	for _, i := range sessions {
		ls := longStream{session: ids[i], res: make(chan result, 1)}
		first := make(chan string, 1)
		body, _ := json.Marshal(map[string]any{"model": "sim-model", "stream": true, "max_tokens": tokens, "min_tokens": tokens,
			"messages": []map[string]string{{"role": "user", "content": "a long answer please"}}})
		go func() {
			r, _ := chatRequest(c, router, ls.session, i, body, true, first)
			ls.res <- r
		}()
		select {
		case ls.worker = <-first:
		case r := <-ls.res:
			t.Fatalf("long stream for %s ended before its first event: %s %s", ls.session, r.outcome, r.detail)
		case <-time.After(10 * time.Second):
			t.Fatalf("long stream for %s: no first event in 10s", ls.session)
		}
		out = append(out, ls)
	}
	return out
}

// requireOn checks the long streams run on the worker about to be faulted.
func requireOn(t *testing.T, streams []longStream, worker string) {
	t.Helper()
	for _, ls := range streams {
		if ls.worker != worker {
			t.Fatalf("long stream for %s runs on %q, want %s", ls.session, ls.worker, worker)
		}
	}
}

// checkLongStreams requires every long stream to end with an in-band error event then
// data: [DONE], within the client deadline.
func checkLongStreams(t *testing.T, streams []longStream, fault string) []result {
	t.Helper()
	var out []result
	for _, ls := range streams {
		r := <-ls.res // chatRequest's own deadline bounds this wait
		out = append(out, r)
		if !r.inBand || r.outcome != clearError {
			t.Errorf("%s: stream in flight for %s ended %s (%s); want an in-band error event and data: [DONE]",
				fault, ls.session, r.outcome, r.detail)
		}
	}
	return out
}

// checkStickiness holds every successful answer outside its owner's fault windows to its
// owner: sessions of healthy workers never move, and moved sessions come back.
func checkStickiness(t *testing.T, rs []result, ids []string, owner map[int]string, windows []faultWindow) {
	t.Helper()
	bad := 0
	for _, r := range rs {
		if r.outcome != succeeded {
			continue
		}
		o := owner[r.session]
		excused := false
		for _, w := range windows {
			if w.worker == o && !r.sentAt.After(w.to) && !r.done.Before(w.from) {
				excused = true
			}
		}
		if !excused && r.worker != o {
			if bad++; bad <= 10 {
				t.Errorf("session %s (owner %s) served by %s at %s outside its owner's fault windows",
					ids[r.session], o, r.worker, r.sentAt.Format("15:04:05.000"))
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d answers from the wrong worker", bad)
	}
}

// reportLoss logs the run's figures and fails the test for every request lost (up to 20
// listed), so both fault suites judge loss the same way.
func reportLoss(t *testing.T, what string, rs, streamed []result, ids []string) {
	t.Helper()
	tl := count(append(rs, streamed...))
	t.Logf("%s: %s", what, tl)
	if tl.lost == 0 {
		return
	}
	n := 0
	for _, r := range rs {
		if r.outcome == lost && n < 20 {
			n++
			t.Errorf("lost: session %s stream=%v worker=%q status=%d: %s", ids[r.session], r.stream, r.worker, r.status, r.detail)
		}
	}
	t.Errorf("%d requests lost, want 0", tl.lost)
}
