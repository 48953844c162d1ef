package main

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/switchyard/switchyard/deploy"
)

var update = flag.Bool("update", false, "rewrite the golden job scripts")

// TestCIJobScripts pins the job scripts run-test.sh submits (its flags, a fixed binary
// path), so a change to the rendering shows up in review next to the test that runs it.
func TestCIJobScripts(t *testing.T) {
	for _, name := range []string{"slurm_multi_replica", "slurm_disaggregated"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("..", "..", "..", "examples", name+".toml")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := deploy.Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			// The flags of run-test.sh's render step.
			got, err := deploy.RenderSlurm(cfg, deploy.SlurmOptions{
				Config: data, Binary: "/opt/switchyard/bin/switchyard", EngineCmd: "sim", BindLocalIP: true,
				LocalIPCommand: `getent hosts "$(hostname)" | awk "{print \$1}"`, Time: "00:05:00",
			})
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("..", "testdata", name+".sbatch.golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Fatalf("rendered job differs from %s (go test -update rewrites it):\n%s", golden, got)
			}
		})
	}
}
