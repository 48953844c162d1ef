package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrWorkerDied is wrapped by the error Launch returns when a worker exited more often
// than LaunchOptions.MaxRestarts allows.
var ErrWorkerDied = errors.New("worker died")

// WorkerExitError says which worker ended the launch and how.
type WorkerExitError struct {
	// Name is the worker's planned name.
	Name string
	// Restarts is how often it had been restarted before this last exit.
	Restarts int
	// Err is the exit status (an *exec.ExitError) or the start failure.
	Err error
}

func (e *WorkerExitError) Error() string {
	return fmt.Sprintf("worker %s died after %d restart(s): %v", e.Name, e.Restarts, e.Err)
}

// Unwrap lets errors.Is match both ErrWorkerDied and the exit error.
func (e *WorkerExitError) Unwrap() []error { return []error{ErrWorkerDied, e.Err} }

// StartRouterFunc starts an inference replica's router in-process. argv is the planned
// vllm-router command line without the program name. The router serves until stop is
// called; stop returns once it has shut down or its context expires.
type StartRouterFunc func(ctx context.Context, argv []string) (stop func(context.Context) error, err error)

// LaunchOptions say which node this is and how to supervise. Zero durations take the
// defaults named below; NodeRank -1 finds the node from SLURM or the host name.
type LaunchOptions struct {
	// NodeRank is this node's index in the plan's node list. -1 means: SLURM_PROCID (or
	// SLURM_NODEID) when set, else 0 for a one-node plan, else the node whose host matches
	// os.Hostname().
	NodeRank int
	// Nodes, when non-nil, replaces the plan's hosts (the plan is rebuilt). When nil and
	// the plan was built on placeholder hosts, SLURM_JOB_NODELIST (expanded with
	// `scontrol show hostnames`) supplies them, or "localhost" for a one-node plan.
	Nodes []string
	// EngineCmd replaces the leading "vllm" of engine command lines, e.g.
	// ["switchyard", "sim"]. nil runs vllm from PATH.
	EngineCmd []string
	// MaxRestarts is how many times one worker is restarted (each restart logged) before
	// its next exit ends the launch with ErrWorkerDied. 0 means the first exit ends it.
	MaxRestarts int
	// StartRouter starts a replica's router; required on a replica's head node.
	StartRouter StartRouterFunc
	// Log receives worker output, each line prefixed with "[name] ", and the launcher's
	// own progress lines. nil means os.Stderr.
	Log io.Writer
	// HealthTimeout bounds the wait for every worker's /health. Default 4200 s, as
	// VLLM_ENGINE_READY_TIMEOUT_S; large models load slowly.
	HealthTimeout time.Duration
	// HealthInterval is the /health polling period. Default 1 s.
	HealthInterval time.Duration
	// ProgressInterval is how often the wait prints a progress line even when nothing
	// changed. Default 10 s.
	ProgressInterval time.Duration
	// StopGrace is how long workers get between SIGTERM and SIGKILL, and the router
	// between stop and being abandoned. Default 10 s.
	StopGrace time.Duration
	// OnProcessStart, if set, is told every worker start (name, pid), restarts included.
	OnProcessStart func(name string, pid int)
	// Getenv reads the environment (SLURM_*); nil means os.Getenv.
	Getenv func(string) string
	// ExpandNodelist turns SLURM_JOB_NODELIST into hosts; nil runs
	// `scontrol show hostnames LIST`.
	ExpandNodelist func(ctx context.Context, nodelist string) ([]string, error)
}

func (o *LaunchOptions) defaults() {
	if o.Log == nil {
		o.Log = os.Stderr
	}
	if o.HealthTimeout <= 0 {
		o.HealthTimeout = 4200 * time.Second
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = time.Second
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 10 * time.Second
	}
	if o.StopGrace <= 0 {
		o.StopGrace = 10 * time.Second
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.ExpandNodelist == nil {
		o.ExpandNodelist = scontrolHostnames
	}
}

// scontrolHostnames expands a SLURM node list ("node[1-3]") into host names.
func scontrolHostnames(ctx context.Context, nodelist string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "scontrol", "show", "hostnames", nodelist).Output()
	if err != nil {
		return nil, fmt.Errorf("expanding SLURM_JOB_NODELIST %q with scontrol: %w", nodelist, err)
	}
	return strings.Fields(string(out)), nil
}

// Launch runs this node's share of the plan until ctx is done or a worker dies more
// often than allowed: it starts the node's workers, each in its own process group with
// its output prefixed by its name, waits for their /health (and, on a replica's head
// node, for every worker of the replica) with progress lines, then starts the router
// through StartRouter. On return every worker's process group has been terminated
// (SIGTERM, then SIGKILL after StopGrace) and the router stopped. It returns nil when
// ctx ended the launch.
func Launch(ctx context.Context, plan *Plan, opts LaunchOptions) error {
	opts.defaults()
	plan, err := resolvePlan(ctx, plan, &opts)
	if err != nil {
		return err
	}
	rank, err := resolveRank(plan, &opts)
	if err != nil {
		return err
	}
	l := &launcher{plan: plan, node: &plan.Nodes[rank], opts: opts, log: &lineLog{w: opts.Log},
		exits: make(chan exitEvent, 16)}
	return l.run(ctx)
}

func resolvePlan(ctx context.Context, plan *Plan, opts *LaunchOptions) (*Plan, error) {
	if plan == nil || plan.cfg == nil {
		return nil, errors.New("launch: the plan must come from BuildPlan")
	}
	hosts := opts.Nodes
	if hosts == nil && plan.placeholders() {
		if list := opts.Getenv("SLURM_JOB_NODELIST"); list != "" {
			h, err := opts.ExpandNodelist(ctx, list)
			if err != nil {
				return nil, err
			}
			hosts = h
		} else if plan.cfg.InferenceNodes() == 1 {
			hosts = []string{"localhost"}
		} else {
			return nil, fmt.Errorf("launch: the plan spans %d nodes: give the hosts (--nodes) or run under SLURM", plan.cfg.InferenceNodes())
		}
	}
	if hosts == nil {
		return plan, nil
	}
	return BuildPlan(plan.cfg, hosts, plan.opts)
}

// placeholders reports whether the plan was built without real hosts.
func (p *Plan) placeholders() bool {
	want := placeholderHosts(len(p.Nodes))
	for i, n := range p.Nodes {
		if n.Host != want[i] {
			return false
		}
	}
	return true
}

func resolveRank(plan *Plan, opts *LaunchOptions) (int, error) {
	rank := opts.NodeRank
	if rank < 0 {
		for _, v := range []string{"SLURM_PROCID", "SLURM_NODEID"} {
			if s := opts.Getenv(v); s != "" {
				n, err := strconv.Atoi(s)
				if err != nil {
					return 0, fmt.Errorf("launch: %s=%q is not a node rank", v, s)
				}
				rank = n
				break
			}
		}
	}
	if rank < 0 && len(plan.Nodes) == 1 {
		rank = 0
	}
	if rank < 0 {
		if h, err := os.Hostname(); err == nil {
			short, _, _ := strings.Cut(h, ".")
			for _, n := range plan.Nodes {
				if n.Host == h || n.Host == short {
					rank = n.Rank
					break
				}
			}
		}
	}
	if rank < 0 {
		return 0, errors.New("launch: cannot tell which node this is: give --node-rank or run under SLURM")
	}
	if rank >= len(plan.Nodes) {
		return 0, fmt.Errorf("launch: node rank %d but the plan has %d nodes", rank, len(plan.Nodes))
	}
	return rank, nil
}

type launcher struct {
	plan  *Plan
	node  *Node
	opts  LaunchOptions
	log   *lineLog
	exits chan exitEvent

	workers []*worker
	stopRtr func(context.Context) error
}

type worker struct {
	proc     Process
	argv     []string
	env      []string
	cmd      *exec.Cmd
	restarts int
	running  bool
}

type exitEvent struct {
	w   *worker
	cmd *exec.Cmd
	err error
}

func (l *launcher) run(ctx context.Context) (err error) {
	n := l.node
	if n.Kind != "inference" {
		l.log.printf("node %d (%s) is a %s node: nothing to launch", n.Rank, n.Host, n.Kind)
		return nil
	}
	defer func() {
		if stopErr := l.shutdown(); stopErr != nil && err == nil {
			err = stopErr
		}
	}()
	for _, f := range n.Files {
		if err := writeFile(f); err != nil {
			return err
		}
	}
	var router *Process
	for i := range n.Processes {
		p := n.Processes[i]
		if p.Role == RoleRouter {
			router = &n.Processes[i]
			continue
		}
		w := &worker{proc: p, argv: l.argv(p), env: append(os.Environ(), sortedEnv(p.Env)...)}
		if dir := p.Env["VLLM_RPC_BASE_PATH"]; dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("launch: %s: %w", p.Name, err)
			}
		}
		l.workers = append(l.workers, w)
		if err := l.start(w); err != nil {
			return err
		}
	}
	if err := l.waitHealthy(ctx, router != nil); err != nil || ctx.Err() != nil {
		return err
	}
	if router != nil {
		if l.opts.StartRouter == nil {
			return fmt.Errorf("launch: node %d heads replica %d but LaunchOptions.StartRouter is nil", n.Rank, n.Replica)
		}
		stop, err := l.opts.StartRouter(ctx, router.Argv[1:])
		if err != nil {
			return fmt.Errorf("launch: starting router %s: %w", router.Name, err)
		}
		l.stopRtr = stop
		l.log.printf("router %s up: clients use %s", router.Name, l.plan.Replicas[n.Replica].RouterURL)
	}
	for {
		select {
		case <-ctx.Done():
			l.log.printf("stopping node %d (%s)", n.Rank, n.Host)
			return nil
		case ev := <-l.exits:
			if err := l.handleExit(ev); err != nil {
				return err
			}
		}
	}
}

// argv swaps the planned "vllm" for EngineCmd.
func (l *launcher) argv(p Process) []string {
	if p.Argv[0] == "vllm" && len(l.opts.EngineCmd) > 0 {
		return append(append([]string{}, l.opts.EngineCmd...), p.Argv[1:]...)
	}
	return append([]string{}, p.Argv...)
}

func (l *launcher) start(w *worker) error {
	cmd := exec.Command(w.argv[0], w.argv[1:]...)
	cmd.Env = w.env
	out := &prefixWriter{prefix: "[" + w.proc.Name + "] ", log: l.log}
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group: stopping kills the engine's children too (vLLM spawns workers).
	// Pdeathsig: a launcher killed outright (SIGKILL, OOM) must not leave engines
	// holding GPUs; the kernel signals them when the launcher goes away.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	// A child that keeps the output pipe open must not block Wait forever.
	cmd.WaitDelay = l.opts.StopGrace
	if err := cmd.Start(); err != nil {
		return &WorkerExitError{Name: w.proc.Name, Restarts: w.restarts, Err: err}
	}
	w.cmd, w.running = cmd, true
	l.log.printf("started %s (pid %d): %s", w.proc.Name, cmd.Process.Pid, shellJoin(w.argv))
	if l.opts.OnProcessStart != nil {
		l.opts.OnProcessStart(w.proc.Name, cmd.Process.Pid)
	}
	go func() {
		err := cmd.Wait()
		out.flush()
		l.exits <- exitEvent{w: w, cmd: cmd, err: err}
	}()
	return nil
}

// handleExit logs a worker's exit and restarts it or ends the launch.
func (l *launcher) handleExit(ev exitEvent) error {
	w := ev.w
	w.running = false
	killGroup(ev.cmd, syscall.SIGKILL) // its children must not outlive it
	status := "exited"
	if ev.err != nil {
		status = ev.err.Error()
	}
	if w.restarts >= l.opts.MaxRestarts {
		l.log.printf("worker %s %s; unhealthy, %d restart(s) used of %d: ending the launch", w.proc.Name, status, w.restarts, l.opts.MaxRestarts)
		err := ev.err
		if err == nil {
			err = errors.New("exit status 0")
		}
		return &WorkerExitError{Name: w.proc.Name, Restarts: w.restarts, Err: err}
	}
	w.restarts++
	l.log.printf("worker %s %s; unhealthy, restarting (%d of %d)", w.proc.Name, status, w.restarts, l.opts.MaxRestarts)
	return l.start(w)
}

// waitHealthy polls /health of this node's workers and, on a head node, of every
// worker of the replica, handling worker exits meanwhile.
func (l *launcher) waitHealthy(ctx context.Context, head bool) error {
	type target struct{ name, url string }
	var targets []target
	local := map[string]bool{}
	for _, p := range l.node.Processes {
		if p.Role != RoleRouter && p.Role != RoleKVStore && p.URL != "" {
			targets = append(targets, target{p.Name, p.URL})
			local[p.URL] = true
		}
	}
	if head {
		for _, n := range l.plan.Nodes {
			if n.Replica != l.node.Replica || n.Rank == l.node.Rank {
				continue
			}
			for _, p := range n.Processes {
				if p.Role != RoleRouter && p.Role != RoleKVStore && p.URL != "" && !local[p.URL] {
					targets = append(targets, target{p.Name, p.URL})
				}
			}
		}
	}
	if len(targets) == 0 {
		return nil
	}
	client := &http.Client{Timeout: 2 * time.Second}
	healthy := make([]bool, len(targets))
	begin := time.Now()
	deadline := time.NewTimer(l.opts.HealthTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(l.opts.HealthInterval)
	defer poll.Stop()
	lastReport, lastCount := time.Time{}, -1
	for {
		count := 0
		var waiting []string
		for i, t := range targets {
			if !healthy[i] {
				healthy[i] = probe(ctx, client, t.url+"/health")
			}
			if healthy[i] {
				count++
			} else {
				waiting = append(waiting, t.name)
			}
		}
		if count != lastCount || time.Since(lastReport) >= l.opts.ProgressInterval {
			line := fmt.Sprintf("node %d: %d/%d workers healthy after %s", l.node.Rank, count, len(targets), time.Since(begin).Round(100*time.Millisecond))
			if len(waiting) > 0 {
				line += "; waiting for " + strings.Join(abbreviate(waiting, 4), ", ")
			}
			l.log.printf("%s", line)
			lastReport, lastCount = time.Now(), count
		}
		if count == len(targets) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-deadline.C:
			return fmt.Errorf("launch: workers not healthy after %s: %s", l.opts.HealthTimeout, strings.Join(abbreviate(waiting, 8), ", "))
		case ev := <-l.exits:
			if err := l.handleExit(ev); err != nil {
				return err
			}
			for i, t := range targets { // a restarted worker must answer again
				if t.name == ev.w.proc.Name {
					healthy[i], lastCount = false, -1
				}
			}
		case <-poll.C:
		}
	}
}

func probe(ctx context.Context, c *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func abbreviate(names []string, n int) []string {
	if len(names) <= n {
		return names
	}
	return append(append([]string{}, names[:n]...), fmt.Sprintf("%d more", len(names)-n))
}

// shutdown stops the router, then every worker's process group: SIGTERM, SIGKILL after
// StopGrace, and waits for each to be reaped.
func (l *launcher) shutdown() error {
	var errs []error
	if l.stopRtr != nil {
		ctx, cancel := context.WithTimeout(context.Background(), l.opts.StopGrace)
		if err := l.stopRtr(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping router: %w", err))
		}
		cancel()
	}
	running := 0
	for _, w := range l.workers {
		if w.running {
			killGroup(w.cmd, syscall.SIGTERM)
			running++
		}
	}
	grace := time.NewTimer(l.opts.StopGrace)
	defer grace.Stop()
	for running > 0 {
		select {
		case ev := <-l.exits:
			if ev.w.cmd == ev.cmd && ev.w.running {
				ev.w.running = false
				running--
			}
			killGroup(ev.cmd, syscall.SIGKILL) // leftovers that ignored SIGTERM
		case <-grace.C:
			for _, w := range l.workers {
				if w.running {
					l.log.printf("worker %s ignored SIGTERM for %s: killing", w.proc.Name, l.opts.StopGrace)
					killGroup(w.cmd, syscall.SIGKILL)
				}
			}
		}
	}
	for _, w := range l.workers { // the private RPC socket dirs made in run
		if dir := w.proc.Env["VLLM_RPC_BASE_PATH"]; dir != "" {
			_ = os.RemoveAll(dir)
			_ = os.Remove(filepath.Dir(dir)) // the host's dir, once empty
		}
	}
	return errors.Join(errs...)
}

// killGroup signals the process group of cmd; a group already gone is fine.
func killGroup(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
}

func writeFile(f File) error {
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	if err := os.WriteFile(f.Path, []byte(f.Content), 0o644); err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	return nil
}

// lineLog serialises whole lines from many workers onto one writer.
type lineLog struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineLog) write(line []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(line)
}

func (l *lineLog) printf(format string, args ...any) {
	l.write([]byte("switchyard launch: " + fmt.Sprintf(format, args...) + "\n"))
}

// prefixWriter splits a worker's output into lines and writes each with the prefix.
type prefixWriter struct {
	prefix string
	log    *lineLog
	mu     sync.Mutex
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.log.write(append([]byte(p.prefix), p.buf[:i+1]...))
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

func (p *prefixWriter) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) > 0 {
		p.log.write(append(append([]byte(p.prefix), p.buf...), '\n'))
		p.buf = nil
	}
}
