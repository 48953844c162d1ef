package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/switchyard/switchyard/deploy"
)

// errCheck is wrapped by every failed check, so a caller can tell a wrong result from a
// deployment that never became ready.
var errCheck = errors.New("check failed")

// pollInterval is how often the URL file and readiness are re-checked.
const pollInterval = 200 * time.Millisecond

// httpGetter is what the client needs from an HTTP client; tests use a real one too.
type httpGetter interface {
	Do(*http.Request) (*http.Response, error)
}

func newHTTP(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
}

// report is what the client measured; summary prints it.
type report struct {
	Shape              string
	Requests, OK       int
	Sessions, Sticky   int
	Workers, Nodes     int // distinct workers and nodes that answered
	PrefillLegs        uint64
	DecodeLegs         uint64
	KVHits, KVMisses   uint64
	KVHitsMetric       uint64 // vllm:sim_kv_transfer_hits_total summed over decode workers
	LeasesExpired      uint64
	EngineCompleted    uint64 // multi-replica: generation requests the engines completed
	RouterURL          string
	PerWorker          map[string]int
	FirstRequestErrors []string
}

func (r report) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "client: shape=%q router=%s requests=%d ok=%d sessions=%d sticky_sessions=%d workers=%d nodes=%d",
		r.Shape, r.RouterURL, r.Requests, r.OK, r.Sessions, r.Sticky, r.Workers, r.Nodes)
	if r.Shape == "disaggregated" {
		fmt.Fprintf(&b, " prefill_legs=%d decode_legs=%d kv_transfer_hits=%d (metric %d) kv_transfer_misses=%d leases_expired=%d",
			r.PrefillLegs, r.DecodeLegs, r.KVHits, r.KVHitsMetric, r.KVMisses, r.LeasesExpired)
	} else {
		fmt.Fprintf(&b, " engine_completed=%d", r.EngineCompleted)
	}
	names := make([]string, 0, len(r.PerWorker))
	for n := range r.PerWorker {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "\nclient:   %s answered %d", n, r.PerWorker[n])
	}
	for _, e := range r.FirstRequestErrors {
		fmt.Fprintf(&b, "\nclient:   error: %s", e)
	}
	return b.String()
}

// engine is one planned engine the client reads stats from.
type engine struct {
	name string // planned process name, e.g. r0.decode0.dp2
	role deploy.ProcessRole
	url  string       // http://host:port
	host string       // the node's host name
	addr string       // resolved ip:port, what the simulator puts in X-Switchyard-Worker
	base *engineStats // counters before the sessions
}

// engineStats is the part of the simulator's /sim/stats the checks use.
type engineStats struct {
	Completed        uint64
	KVTransferHits   uint64
	KVTransferMisses uint64
	LeasesIssued     uint64
	LeasesClaimed    uint64
	LeasesExpired    uint64
	LeasesActive     int
	PrefillLegs      uint64
	DecodeLegs       uint64
}

func (s engineStats) minus(b engineStats) engineStats {
	return engineStats{
		Completed: s.Completed - b.Completed, KVTransferHits: s.KVTransferHits - b.KVTransferHits,
		KVTransferMisses: s.KVTransferMisses - b.KVTransferMisses, LeasesIssued: s.LeasesIssued - b.LeasesIssued,
		LeasesClaimed: s.LeasesClaimed - b.LeasesClaimed, LeasesExpired: s.LeasesExpired - b.LeasesExpired,
		LeasesActive: s.LeasesActive, PrefillLegs: s.PrefillLegs - b.PrefillLegs, DecodeLegs: s.DecodeLegs - b.DecodeLegs,
	}
}

// exercise waits for the deployment of the plan's single replica, runs the sessions and
// checks them. The report is filled as far as it got, also on error.
func exercise(ctx context.Context, plan *deploy.Plan, o options, hc httpGetter, log io.Writer) (report, error) {
	rep := report{Shape: plan.Shape, PerWorker: map[string]int{}}
	if len(plan.Replicas) != 1 {
		return rep, fmt.Errorf("the test drives one inference replica, the plan has %d", len(plan.Replicas))
	}
	deadline, cancel := context.WithTimeout(ctx, o.wait)
	defer cancel()
	routerURL, err := waitURLFile(deadline, o.urlFile, plan.Replicas[0].RouterURL)
	if err != nil {
		return rep, err
	}
	rep.RouterURL = routerURL
	engines, err := plannedEngines(ctx, plan)
	if err != nil {
		return rep, err
	}
	if err := waitReady(deadline, hc, routerURL, engines, log); err != nil {
		return rep, err
	}
	for _, e := range engines {
		st, err := fetchStats(ctx, hc, e.url)
		if err != nil {
			return rep, err
		}
		e.base = &st
	}

	results := runSessions(ctx, hc, routerURL, plan.Model, o.sessions, o.turns)
	var checkErrs []error
	fail := func(format string, args ...any) {
		checkErrs = append(checkErrs, fmt.Errorf("%w: "+format, append([]any{errCheck}, args...)...))
	}
	byAddr := map[string]*engine{}
	for _, e := range engines {
		byAddr[e.addr] = e
	}
	nodesSeen := map[string]bool{}
	rep.Sessions = len(results)
	for _, sess := range results {
		workers := map[string]bool{}
		for _, t := range sess.turns {
			rep.Requests++
			if t.err != nil {
				if len(rep.FirstRequestErrors) < 5 {
					rep.FirstRequestErrors = append(rep.FirstRequestErrors, fmt.Sprintf("session %s: %v", sess.id, t.err))
				}
				continue
			}
			rep.OK++
			workers[t.worker] = true
			rep.PerWorker[t.worker]++
			if e, ok := byAddr[t.worker]; ok {
				nodesSeen[e.host] = true
			}
		}
		if len(workers) == 1 {
			rep.Sticky++
		} else {
			fail("session %s was answered by %d workers %v, want 1", sess.id, len(workers), keys(workers))
		}
	}
	rep.Workers, rep.Nodes = len(rep.PerWorker), len(nodesSeen)
	if rep.OK != rep.Requests {
		fail("%d of %d requests failed", rep.Requests-rep.OK, rep.Requests)
	}
	if rep.Nodes < 2 {
		fail("the sessions were answered on %d node(s); the hash should spread %d sessions over several", rep.Nodes, rep.Sessions)
	}
	// The engine that answered is the one the header names: a decode engine for P/D.
	answering := deploy.RoleWorker
	if plan.Shape == "disaggregated" {
		answering = deploy.RoleDecode
	}
	for name := range rep.PerWorker {
		if e, ok := byAddr[name]; !ok || e.role != answering {
			fail("X-Switchyard-Worker %q is not a planned %s engine", name, answering)
		}
	}

	delta := map[*engine]engineStats{}
	for _, e := range engines {
		st, err := fetchStats(ctx, hc, e.url)
		if err != nil {
			return rep, err
		}
		delta[e] = st.minus(*e.base)
	}
	if plan.Shape == "disaggregated" {
		checkDisaggregated(ctx, hc, engines, delta, &rep, fail)
	} else {
		for _, e := range engines {
			d := delta[e]
			rep.EngineCompleted += d.Completed
			if int(d.Completed) != rep.PerWorker[e.addr] {
				fail("%s (%s) completed %d requests, the client saw it answer %d", e.name, e.addr, d.Completed, rep.PerWorker[e.addr])
			}
		}
		if int(rep.EngineCompleted) != rep.OK {
			fail("the engines completed %d requests, the client got %d answers", rep.EngineCompleted, rep.OK)
		}
	}
	return rep, errors.Join(checkErrs...)
}

// checkDisaggregated checks that every request was prefilled on a prefill node and
// decoded on a different node with the prefill's KV, none recomputed or stranded.
func checkDisaggregated(ctx context.Context, hc httpGetter, engines []*engine, delta map[*engine]engineStats, rep *report, fail func(string, ...any)) {
	prefillHosts := map[string]bool{}
	for _, e := range engines {
		if e.role == deploy.RolePrefill {
			prefillHosts[e.host] = true
		}
	}
	var claimed uint64
	active := 0
	for _, e := range engines {
		d := delta[e]
		switch e.role {
		case deploy.RolePrefill:
			rep.PrefillLegs += d.PrefillLegs
			claimed += d.LeasesClaimed
			rep.LeasesExpired += d.LeasesExpired
			active += d.LeasesActive
			if d.DecodeLegs != 0 {
				fail("prefill engine %s served %d decode legs", e.name, d.DecodeLegs)
			}
		case deploy.RoleDecode:
			if prefillHosts[e.host] {
				fail("decode engine %s shares node %s with a prefill engine: the transfer would not cross nodes", e.name, e.host)
			}
			rep.DecodeLegs += d.DecodeLegs
			rep.KVHits += d.KVTransferHits
			rep.KVMisses += d.KVTransferMisses
			if d.PrefillLegs != 0 {
				fail("decode engine %s served %d prefill legs", e.name, d.PrefillLegs)
			}
			if int(d.DecodeLegs) != rep.PerWorker[e.addr] {
				fail("%s (%s) served %d decode legs, the client saw it answer %d", e.name, e.addr, d.DecodeLegs, rep.PerWorker[e.addr])
			}
			hits, err := metricSum(ctx, hc, e.url, "vllm:sim_kv_transfer_hits_total")
			if err != nil {
				fail("%v", err)
			}
			rep.KVHitsMetric += uint64(hits) - e.base.KVTransferHits
		}
	}
	n := uint64(rep.OK)
	for _, c := range []struct {
		what string
		got  uint64
	}{{"prefill legs", rep.PrefillLegs}, {"decode legs", rep.DecodeLegs}, {"KV transfer hits", rep.KVHits},
		{"vllm:sim_kv_transfer_hits_total", rep.KVHitsMetric}, {"leases claimed", claimed}} {
		if c.got != n {
			fail("%s = %d, want one per request (%d)", c.what, c.got, n)
		}
	}
	if rep.KVMisses != 0 || rep.LeasesExpired != 0 || active != 0 {
		fail("KV recomputed or stranded: %d misses, %d leases expired, %d still held", rep.KVMisses, rep.LeasesExpired, active)
	}
}

// plannedEngines lists the plan's engines with the address each reports itself by.
func plannedEngines(ctx context.Context, plan *deploy.Plan) ([]*engine, error) {
	var out []*engine
	for _, n := range plan.Nodes {
		for _, p := range n.Processes {
			if p.Role != deploy.RoleWorker && p.Role != deploy.RolePrefill && p.Role != deploy.RoleDecode {
				continue
			}
			u, err := url.Parse(p.URL)
			if err != nil {
				return nil, fmt.Errorf("planned URL of %s: %w", p.Name, err)
			}
			ips, err := net.DefaultResolver.LookupHost(ctx, u.Hostname())
			if err != nil || len(ips) == 0 {
				return nil, fmt.Errorf("resolving node %s of %s: %w", u.Hostname(), p.Name, err)
			}
			out = append(out, &engine{name: p.Name, role: p.Role, url: p.URL, host: n.Host, addr: net.JoinHostPort(ips[0], u.Port())})
		}
	}
	if len(out) == 0 {
		return nil, errors.New("the plan has no engines")
	}
	return out, nil
}

// waitURLFile polls the job's URL file until it holds the planned router URL.
func waitURLFile(ctx context.Context, path, want string) (string, error) {
	for {
		data, err := os.ReadFile(path)
		if got := strings.TrimSpace(string(data)); err == nil && got != "" {
			urls := strings.Split(got, ",")
			if len(urls) != 1 || urls[0] != want {
				return "", fmt.Errorf("%w: %s holds %q, the plan's router URL is %q", errCheck, path, got, want)
			}
			return urls[0], nil
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			return "", fmt.Errorf("waiting for the job to write %s: %w", path, err)
		}
	}
}

// waitReady polls until every engine answers /health and the router reports all its
// workers healthy.
func waitReady(ctx context.Context, hc httpGetter, routerURL string, engines []*engine, log io.Writer) error {
	root := strings.TrimSuffix(routerURL, "/v1")
	start := time.Now()
	last := ""
	for {
		status := ""
		for _, e := range engines {
			if code, _, err := get(ctx, hc, e.url+"/health"); err != nil || code != http.StatusOK {
				status = fmt.Sprintf("engine %s (%s) not healthy yet", e.name, e.url)
				break
			}
		}
		if status == "" {
			code, body, err := get(ctx, hc, root+"/readiness")
			var r struct {
				Healthy int `json:"healthy_workers"`
				Total   int `json:"total_workers"`
			}
			switch {
			case err != nil || code != http.StatusOK:
				status = fmt.Sprintf("router %s not ready (%d %v)", root, code, err)
			case json.Unmarshal(body, &r) != nil || r.Healthy != r.Total || r.Total < len(engines):
				// Total counts data-parallel ranks, so it may exceed the engine count.
				status = fmt.Sprintf("router %s: %s", root, strings.TrimSpace(string(body)))
			default:
				fmt.Fprintf(log, "client: deployment ready after %.1fs (%d engines)\n", time.Since(start).Seconds(), len(engines))
				return nil
			}
		}
		if status != last {
			fmt.Fprintln(log, "client:", status)
			last = status
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			return fmt.Errorf("deployment not ready: %s: %w", status, err)
		}
	}
}

func fetchStats(ctx context.Context, hc httpGetter, base string) (engineStats, error) {
	var st engineStats
	code, body, err := get(ctx, hc, base+"/sim/stats")
	if err != nil || code != http.StatusOK {
		return st, fmt.Errorf("GET %s/sim/stats: %d %v", base, code, err)
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("GET %s/sim/stats: %w", base, err)
	}
	return st, nil
}

// metricSum adds up every sample of a Prometheus counter in base's /metrics.
func metricSum(ctx context.Context, hc httpGetter, base, name string) (float64, error) {
	code, body, err := get(ctx, hc, base+"/metrics")
	if err != nil || code != http.StatusOK {
		return 0, fmt.Errorf("GET %s/metrics: %d %v", base, code, err)
	}
	return sumSamples(body, name)
}

// sumSamples adds the values of every sample of metric name in Prometheus text format.
func sumSamples(text []byte, name string) (float64, error) {
	var sum float64
	found := false
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		fields := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(fields) == 0 {
			return 0, fmt.Errorf("metric line without a value: %q", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("metric %s not exported", name)
	}
	return sum, sc.Err()
}

func get(ctx context.Context, hc httpGetter, u string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// turn is one request's outcome.
type turn struct {
	worker string // X-Switchyard-Worker
	err    error
}

type sessionResult struct {
	id    string
	turns []turn
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// runSessions runs every session concurrently, each one's turns in order, every turn
// sending the conversation so far (as an RL rollout does) under its X-Session-ID.
func runSessions(ctx context.Context, hc httpGetter, routerURL, model string, sessions, turns int) []sessionResult {
	out := make([]sessionResult, sessions)
	var wg sync.WaitGroup
	for i := range out {
		out[i].id = fmt.Sprintf("slurm-ci-%03d", i)
		wg.Add(1)
		go func(s *sessionResult) {
			defer wg.Done()
			var history []chatMessage
			for t := range turns {
				history = append(history, chatMessage{"user", fmt.Sprintf("session %s, turn %d: continue the story.", s.id, t)})
				reply, worker, err := chat(ctx, hc, routerURL, model, s.id, history)
				s.turns = append(s.turns, turn{worker: worker, err: err})
				if err != nil {
					reply = "(no reply)"
				}
				history = append(history, chatMessage{"assistant", reply})
			}
		}(&out[i])
	}
	wg.Wait()
	return out
}

// chat sends one non-streaming chat completion and returns the reply and the worker.
func chat(ctx context.Context, hc httpGetter, routerURL, model, session string, history []chatMessage) (string, string, error) {
	body, err := json.Marshal(map[string]any{"model": model, "messages": history, "max_tokens": 8})
	if err != nil {
		return "", "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, routerURL+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Session-ID", session)
	resp, err := hc.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", "", err
	}
	worker := resp.Header.Get("X-Switchyard-Worker")
	if resp.StatusCode != http.StatusOK {
		return "", worker, fmt.Errorf("status %d: %.200s", resp.StatusCode, data)
	}
	var r struct {
		Choices []struct {
			Message chatMessage `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(data, &r); err != nil || len(r.Choices) == 0 || r.Choices[0].Message.Content == "" {
		return "", worker, fmt.Errorf("no reply in %.200s (%v)", data, err)
	}
	if worker == "" {
		return "", "", errors.New("response without X-Switchyard-Worker")
	}
	return r.Choices[0].Message.Content, worker, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
