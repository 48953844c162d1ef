package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
