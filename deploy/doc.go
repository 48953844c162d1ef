// Package deploy turns a prime-rl style TOML deployment (the seed's [inference],
// [inference.deployment], [deployment] tables) into a plan of processes — vLLM workers
// and, per inference replica, one router — and launches this node's share of that plan
// as a supervising sidecar.
//
// The flow is Load → Validate (inside Load) → BuildPlan → Launch:
//
//   - config.go decodes the TOML strictly (unknown keys are errors with their line,
//     except under vllm_extra) and folds prime-rl's newer field names into the seed's.
//   - validate.go holds every rule that rejects a combination, one message per rule.
//   - plan.go assigns hosts, ports, GPUs and data-parallel ranks the way prime-rl's SLURM
//     templates do, and builds each `vllm serve` argv and the router's vllm-router argv.
//   - launch.go starts this node's workers in their own process groups, waits for their
//     /health, starts the router in-process on a replica's head node, and tears all of
//     it down on cancel.
//   - slurm.go renders an sbatch script that runs `switchyard launch` on every node.
//
// deploy never imports the router: the router is started through an injected function
// that receives the planned vllm-router argv.
package deploy
