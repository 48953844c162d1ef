package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func renderExample(t *testing.T, name string, opts SlurmOptions) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "examples", name+".toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	opts.Config = data
	if opts.Binary == "" {
		opts.Binary = "/opt/switchyard/bin/switchyard"
	}
	script, err := RenderSlurm(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return script
}

func TestSlurmGolden(t *testing.T) {
	tests := []struct {
		example string
		opts    SlurmOptions
		want    []string // lines the script must contain
	}{
		{"single_node", SlurmOptions{}, []string{"#SBATCH --nodes=1", `INFER_URLS="http://${HOSTNAMES[0]}:8000/v1"`}},
		{"multi_replica", SlurmOptions{Partition: "gpu", Account: "rl", Time: "24:00:00"}, []string{"#SBATCH --partition=gpu", "#SBATCH --account=rl", "#SBATCH --time=24:00:00", "#SBATCH --nodes=2"}},
		{"wide_ep", SlurmOptions{Nodelist: "gpu[01-02]", Exclude: "gpu07"}, []string{"#SBATCH --nodelist=gpu[01-02]", "#SBATCH --exclude=gpu07"}},
		{"disaggregated", SlurmOptions{EngineCmd: "sim", BindLocalIP: true, GPUsPerNode: -1, MaxRestarts: 2,
			LocalIPCommand: `getent hosts "$(hostname)" | awk '{print $1}'`},
			[]string{`--bind "$LOCAL_IP" --engine-cmd sim --max-restarts 2`, `LOCAL_IP=$(getent hosts "$(hostname)" | awk '{print $1}')`}},
		{"disaggregated_18node", SlurmOptions{JobName: "rl-run", URLFile: "/shared/urls"}, []string{
			"#SBATCH --nodes=22", "#SBATCH --job-name=rl-run", `URL_FILE="/shared/urls"`, "NUM_INFER_NODES=18",
			`INFER_URLS="http://${HOSTNAMES[0]}:8000/v1,http://${HOSTNAMES[6]}:8000/v1,http://${HOSTNAMES[12]}:8000/v1"`,
			`TRAIN_NODES=$(IFS=,; echo "${HOSTNAMES[*]:NUM_INFER_NODES:4}")`}},
	}
	for _, tc := range tests {
		t.Run(tc.example, func(t *testing.T) {
			script := renderExample(t, tc.example, tc.opts)
			golden(t, tc.example+".sbatch.golden", []byte(script))
			for _, w := range tc.want {
				if !strings.Contains(script, w) {
					t.Errorf("script lacks %q", w)
				}
			}
			if tc.opts.GPUsPerNode < 0 && strings.Contains(script, "--gpus-per-node") {
				t.Error("GPUsPerNode -1 still requests GPUs")
			}
			syntax := exec.Command("bash", "-n")
			syntax.Stdin = strings.NewReader(script)
			if out, err := syntax.CombinedOutput(); err != nil {
				t.Errorf("bash -n: %v\n%s", err, out)
			}
		})
	}
}

func TestSlurmConfigDefaultsAndErrors(t *testing.T) {
	data := []byte("[inference]\nmodel = \"m\"\n[inference.slurm]\npartition = \"cluster\"\njob_name = \"from-config\"\n")
	cfg, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	script, err := RenderSlurm(cfg, SlurmOptions{Config: data, Binary: "sy", Partition: "override"})
	if err != nil || !strings.Contains(script, "#SBATCH --partition=override") || !strings.Contains(script, "#SBATCH --job-name=from-config") {
		t.Errorf("flags override [inference.slurm], which fills the rest: %v\n%s", err, script)
	}
	if _, err := RenderSlurm(cfg, SlurmOptions{Binary: "sy"}); err == nil {
		t.Error("rendered without the TOML text")
	}
	evil := append(append([]byte{}, data...), []byte("# SWITCHYARD_CONFIG\n")...)
	if _, err := RenderSlurm(cfg, SlurmOptions{Config: evil, Binary: "sy"}); err == nil || !strings.Contains(err.Error(), "SWITCHYARD_CONFIG") {
		t.Errorf("a delimiter inside the config must be refused: %v", err)
	}
}

func TestSlurmMain(t *testing.T) {
	example := filepath.Join("..", "examples", "disaggregated.toml")
	dir := t.TempDir()
	fakeSbatch := filepath.Join(dir, "sbatch")
	got := filepath.Join(dir, "submitted.sh")
	if err := os.WriteFile(fakeSbatch, []byte("#!/bin/sh\ncat > "+got+"\necho '4242;cluster'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	saved := sbatchCommand
	sbatchCommand = []string{fakeSbatch, "--parsable"}
	t.Cleanup(func() { sbatchCommand = saved })

	var stdout, stderr bytes.Buffer
	if code := SlurmMain([]string{example, "--partition", "p", "--binary", "/x/sy"}, &stdout, &stderr); code != 0 ||
		!strings.HasPrefix(stdout.String(), "#!/bin/bash\n") || !strings.Contains(stdout.String(), "#SBATCH --partition=p") {
		t.Errorf("dry run: %d %q", code, stderr.String())
	}
	dry := stdout.String()
	stdout.Reset()
	if code := SlurmMain([]string{"--submit", example, "--partition", "p", "--binary", "/x/sy"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stdout.String(), "submitted job 4242") {
		t.Errorf("submit: %d %q %q", code, stdout.String(), stderr.String())
	}
	if sent, err := os.ReadFile(got); err != nil || string(sent) != dry {
		t.Errorf("sbatch got a different script than --dry-run prints: %v", err)
	}
	for _, args := range [][]string{{example, "--dry-run", "--submit"}, {}, {example, "--bogus"}} {
		if code := SlurmMain(args, &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	stderr.Reset()
	if code := SlurmMain([]string{filepath.Join(dir, "none.toml")}, &bytes.Buffer{}, &stderr); code != 1 || !strings.Contains(stderr.String(), "reading deployment config") {
		t.Errorf("missing config: %d %q", code, stderr.String())
	}
}

var startedPID = regexp.MustCompile(`started \S+ \(pid (\d+)\)`)

// TestSlurmScriptRuns runs a rendered script end to end with stand-ins for srun and
// scontrol (testdata/fakeslurm): two emulated nodes on 127.0.0.1 and 127.0.0.2, fake
// engines, a 1P+1D deployment. It routes traffic through the head's router, then
// either TERMs the job (as scancel does) or lets a dying prefill worker fail it, and
// finds no process and no node-local directory left.
func TestSlurmScriptRuns(t *testing.T) {
	tests := []struct {
		name    string
		env     string // extra [inference.deployment] line
		failing bool
	}{
		{"cancelled", "", false},
		{"worker death fails the job", `prefill_env_overrides = {FAKE_ENGINE_EXIT_AFTER = "1500ms"}`, true},
	}
	fakeslurm, err := filepath.Abs(filepath.Join("testdata", "fakeslurm"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ports := freePorts(t, 3)
			data := []byte(fmt.Sprintf("[inference]\nmodel = \"m\"\n[inference.deployment]\ntype = \"disaggregated\"\ngpus_per_node = 1\nrouter_port = %d\nprefill_port = %d\ndecode_port = %d\n%s\n",
				ports[0], ports[1], ports[2], tc.env))
			cfg, err := Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			script, err := RenderSlurm(cfg, SlurmOptions{Config: data, Binary: fakeLauncher, EngineCmd: fakeEngine,
				BindLocalIP: true, LocalIPCommand: "echo 127.0.0.$((SLURM_PROCID + 1))", GPUsPerNode: -1,
				URLFile: filepath.Join(dir, "urls")})
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("bash", "-c", script)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "PATH="+fakeslurm+":"+os.Getenv("PATH"), "FAKE_SLURM_HOSTS=127.0.0.1 127.0.0.2",
				"SLURM_JOB_NODELIST=fake[1-2]", "SLURM_JOB_ID=77", "TMPDIR="+dir)
			var out syncBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })

			if !tc.failing {
				res := completion(t, ports[0], time.Now().Add(20*time.Second))
				if res["served_by"] != strconv.Itoa(ports[2]) || res["prefilled_by"] != strconv.Itoa(ports[1]) {
					t.Errorf("response %v", res)
				}
				urls, err := os.ReadFile(filepath.Join(dir, "urls"))
				if want := fmt.Sprintf("http://127.0.0.1:%d/v1\n", ports[0]); err != nil || string(urls) != want {
					t.Errorf("url file %q (%v), want %q", urls, err, want)
				}
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // what scancel does to the job
			}
			select {
			case err := <-done:
				if tc.failing && err == nil {
					t.Errorf("the job succeeded although a worker died:\n%s", out.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("the job did not end:\n%s", out.String())
			}
			log := out.String()
			for _, want := range []string{"node rank 0 is", "node rank 1 is", "(127.0.0.2)", "INFER_URLS=http://127.0.0.1:"} {
				if !strings.Contains(log, want) {
					t.Errorf("job output lacks %q:\n%s", want, log)
				}
			}
			var pids []int
			for _, m := range startedPID.FindAllStringSubmatch(log, -1) {
				pid, _ := strconv.Atoi(m[1])
				pids = append(pids, pid)
			}
			if len(pids) < 2 {
				t.Fatalf("expected both workers to start:\n%s", log)
			}
			waitGone(t, pids)
			deadline := time.Now().Add(5 * time.Second)
			for _, node := range []string{"fakenode0", "fakenode1"} {
				work := filepath.Join(dir, "switchyard-77-"+node)
				for _, err := os.Stat(work); err == nil; _, err = os.Stat(work) {
					if time.Now().After(deadline) {
						t.Errorf("%s was not cleaned up", work)
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
}
