package fault

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bench/sim"
)

const (
	// slowClients trickle their headers at once.
	slowClients = 32
	// slowCutBound is how long the router may let a client trickle headers before it cuts
	// the connection. A request's headers arrive in milliseconds; 15 s is generous and
	// still bounds how long a slowloris client holds a connection and its buffers.
	slowCutBound = 15 * time.Second
)

// Slowloris: clients that trickle header lines forever must not delay anyone else, and
// the router must cut them.
func TestSlowloris(t *testing.T) {
	t.Parallel()
	_, routerBin := binaries(t)
	w := startInProcSim(t, "slowloris-worker", sim.RoleBoth)
	rt := startRouterProc(t, routerBin, "--worker-urls", "http://"+w, "--policy", "round_robin", "--health-check-interval-secs", "0.3")
	c := newClient(t)
	eventually(t, 15*time.Second, "router ready", func() bool {
		r, _ := chatRequest(c, rt.addr, "", 0, []byte(chatBody), false, nil)
		return r.outcome == succeeded
	})

	start := time.Now()
	cut := make(chan time.Duration, slowClients)
	stop := make(chan struct{})
	var conns []net.Conn
	t.Cleanup(func() {
		close(stop)
		for _, conn := range conns {
			conn.Close()
		}
	})
	for i := 0; i < slowClients; i++ {
		conn, err := net.Dial("tcp", rt.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		if _, err := fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n"); err != nil {
			t.Fatal(err)
		}
		// The reader sees the cut: a 408, EOF or a reset.
		go func() {
			_, _ = io.Copy(io.Discard, conn)
			cut <- time.Since(start)
		}()
		// The writer trickles one header line every 200ms until the connection dies.
		go func(i int) {
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := fmt.Fprintf(conn, "X-Slow-%d: %d\r\n", n, i); err != nil {
					return
				}
			}
		}(i)
	}

	// Others are served promptly meanwhile.
	for k := 0; k < 20; k++ {
		t0 := time.Now()
		r, _ := chatRequest(c, rt.addr, "", 0, []byte(chatBody), false, nil)
		if r.outcome != succeeded {
			t.Fatalf("normal request %d during slowloris: %s %s", k, r.outcome, r.detail)
		}
		if took := time.Since(t0); took > 2*time.Second {
			t.Errorf("normal request %d took %v during slowloris", k, took)
		}
	}

	deadline := time.After(slowCutBound)
	for n := 0; n < slowClients; n++ {
		select {
		case d := <-cut:
			if n == 0 {
				t.Logf("first slow client cut after %v", d.Round(time.Millisecond))
			}
		case <-deadline:
			t.Fatalf("%d of %d slow clients still connected %v after they started trickling headers; want the router to cut them",
				slowClients-n, slowClients, slowCutBound)
		}
	}
	checkServes(t, c, rt.addr)
}
