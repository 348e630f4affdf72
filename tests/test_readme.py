"""Every code block of the README runs as written, or has a named twin in the tests.

* Python blocks run as written in a fresh interpreter from the repository root (the ones that
  read ``../shared`` are skipped, saying so, when it is absent); a block that starts with
  ``# excerpt of <path>`` quotes a source file, and each of its lines must stand in that file.
* Each command line of the bash blocks is listed in :data:`COMMANDS` with how it is checked:
  ``run`` (executed as written, quick ones), ``parse`` (``train.py`` / ``evaluate.py``: the
  flags are parsed and validated exactly as the script does, without the hours of work behind
  them), or ``twin`` (a named test exercises it). A README command that is not listed fails
  :func:`test_every_readme_command_is_checked`, so a new example cannot go unchecked.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)


def _commands() -> list[str]:
    out = []
    for lang, body in BLOCKS:
        if lang != "bash":
            continue
        for line in body.splitlines():
            cmd = re.split(r"\s#\s", line)[0].strip()
            if cmd and not cmd.startswith("#"):
                out.append(cmd)
    return out


H = "random,round-robin,local-first,jsq,p2c,llm-d,slo-greedy,local-spill,cost-greedy"

#: README command -> ("run", timeout_s) | ("parse", script) | ("twin", "tests/file.py::test_name").
COMMANDS: dict[str, tuple] = {
    "pip install torch==2.13.0 && pip install -e '.[train]' && python train.py": ("twin", "tests/agents/test_training.py::test_run_writes_models_checkpoints_and_stats"),
    "pip install torch==2.13.0 && pip install -e '.[test]' && python -m pytest -q": ("twin", ".ci/run"),
    "python -m gridenv.fidelity": ("run", 300),
    "python -m gridenv.fidelity.fit": ("twin", "tests/core/test_fidelity.py::test_fit_objective_reads_fit_rows_only"),
    "python -m gridenv.fidelity.fit --stack vllm-v1-2025": ("twin", "tests/core/test_fidelity.py::test_fit_objective_reads_fit_rows_only"),
    "python -m gridenv.bench": ("twin", "tests/test_bench.py::test_json_output_has_the_documented_keys"),
    "python -m gridenv.bench --scenarios metro,configs/scenarios/bursty.yaml --min-seconds 2": ("run", 300),
    "python -m gridenv.bench_trace": ("twin", "tests/core/test_bench_trace.py"),
    "python train.py": ("parse", "train.py"),
    "python train.py --scenario continental --total-timesteps 4000000 --seed 0": ("parse", "train.py"),
    "python train.py --resume --total-timesteps 8000000": ("parse", "train.py"),
    "tensorboard --logdir runs/": ("twin", "tests/agents/test_training.py::test_tensorboard_has_custom_episode_and_eval_scalars"),
    "sed 's/^name: metro$/name: my-grid/' configs/scenarios/metro.yaml > my-grid.yaml": ("twin", "tests/agents/test_training.py::test_train_on_a_scenario_yaml_path"),
    "python train.py --scenario my-grid.yaml --total-timesteps 20000 --eval-freq 10000 --leaderboard-suite smoke": ("twin", "tests/agents/test_training.py::test_train_on_a_scenario_yaml_path"),
    "python evaluate.py --suite smoke --scenarios my-grid.yaml --policies jsq,llm-d,mine=runs/my-grid_maskable_ppo_s0": ("twin", "tests/agents/test_evaluation.py::test_a_scenario_yaml_path_works_in_evaluate"),
    "python train.py --hyperparams configs/ppo_fast.yaml": ("parse", "train.py"),
    "python train.py --scenario metro --hyperparams configs/ppo_fast.yaml --warm-start cost-greedy --total-timesteps 600000 --eval-freq 50000 --seed 1": ("parse", "train.py"),
    "python -m agents.bench_training --steps 20480 --repeats 2": ("twin", "tests/agents/test_vec_env.py::test_bench_training_reports_every_variant"),
    "python evaluate.py --suite smoke --out /tmp/lb": ("run", 600),
    # the merge example: two pieces, then their merge (run in this order, as the README block)
    "python evaluate.py --suite smoke --scenarios metro --policies random,jsq,slo-greedy --out /tmp/lb-pieces/1-metro": ("run", 300),
    "python evaluate.py --suite smoke --scenarios distributed-edge --policies random,jsq,slo-greedy --out /tmp/lb-pieces/2-edge": ("run", 300),
    "python evaluate.py --merge /tmp/lb-pieces/1-metro /tmp/lb-pieces/2-edge --out /tmp/lb-merged": ("run", 300),
    "python evaluate.py --suite standard --policies ppo-metro=models/metro,jsq,llm-d": ("parse", "evaluate.py"),
    "python evaluate.py --report claims": ("parse", "evaluate.py"),
    "python evaluate.py --suite cache --policies jsq,slo-greedy,local-spill,llmd-precise,dynamo-kv": ("parse", "evaluate.py"),
    "python evaluate.py --suite generalization --policies jsq,slo-greedy,cost-greedy": ("parse", "evaluate.py"),
    "python evaluate.py --suite generalization --policies generalist=models/generalist,slo-greedy,cost-greedy": ("parse", "evaluate.py"),
    "python evaluate.py --suites-file configs/suites_generalist.yaml --suite zero-shot --policies slo-greedy,cost-greedy,generalist=models/generalist": ("parse", "evaluate.py"),
    "python evaluate.py --suites-file configs/suites_generalist.yaml --suite zero-shot --scenarios metro --policies slo-greedy,cost-greedy,generalist=models/generalist,slo-greedy-b128=examples/largest_batch_reference.py:SloGreedyLargestBatch": ("parse", "evaluate.py"),
    "python -m gridenv.core.random_grid --seeds 1500000008 --out configs/own-grid --prefix own-grid": ("twin", "tests/agents/test_generalist_training.py::test_own_grid_file_is_what_the_generator_writes"),
    "python train.py --scenario configs/own-grid/own-grid-1500000008.yaml": ("parse", "train.py"),
    "python train.py --scenario configs/own-grid/own-grid-1500000008.yaml --init-from models/generalist --run-dir runs/own-grid_ft": ("parse", "train.py"),
    "python train.py --scenario random-grid --hyperparams configs/ppo_generalist.yaml --env-config '{\"p_sharing\": 0.5}' --warm-start prefix-switch --warm-start-level 2 --warm-start-steps 200000 --warm-start-updates 8000 --warm-start-dagger 1 --warm-start-anchor 8 --no-eval-leaderboard": ("parse", "train.py"),
    """python -m agents.bench_training --scenario random-grid --steps 16384 --variants fast --extra '{"dummy4": {"hyperparams": "configs/ppo.yaml", "vec_backend": "dummy", "n_envs": 4, "n_steps": 512}}'""": ("twin", "tests/agents/test_vec_env.py::test_bench_training_reports_every_variant"),
    f"H={H}": ("twin", "(shell variable of the next two lines)"),
    "python evaluate.py --suite standard --scenarios metro --policies $H,ppo-metro=models/metro/best_model.zip": ("parse", "evaluate.py"),
    "python train.py --scenario chat-multiturn --hyperparams configs/ppo_cache.yaml --warm-start slo-greedy --warm-start-level 2 --warm-start-steps 100000 --total-timesteps 1500000 --eval-freq 100000 --seed 1": ("parse", "train.py"),
    "python train.py --scenario coding-agent --hyperparams configs/ppo_cache.yaml --warm-start llmd-precise --warm-start-level 1 --warm-start-core-level 2 --warm-start-steps 100000 --total-timesteps 1500000 --eval-freq 100000 --seed 1": ("parse", "train.py"),
    "python evaluate.py --suite standard --scenarios chat-multiturn --policies random,round-robin,local-first,jsq,p2c,llm-d,slo-greedy,local-spill,cost-greedy,llmd-precise,llmd-approx,dynamo-kv,sglang-cache,vllm-ps-prefix,ray-prefix,aibrix-prefix,random+admit,round-robin+admit,local-first+admit,jsq+admit,p2c+admit,llm-d+admit,local-spill+admit,ppo-chat-multiturn=models/chat-multiturn/best_model.zip": ("parse", "evaluate.py"),
    "python evaluate.py --suite standard --scenarios coding-agent --policies random,round-robin,local-first,jsq,p2c,llm-d,slo-greedy,local-spill,cost-greedy,llmd-precise,llmd-approx,dynamo-kv,sglang-cache,vllm-ps-prefix,ray-prefix,aibrix-prefix,random+admit,round-robin+admit,local-first+admit,jsq+admit,p2c+admit,llm-d+admit,local-spill+admit,ppo-coding-agent=models/coding-agent/best_model.zip": ("parse", "evaluate.py"),
    "python evaluate.py --suite standard --scenarios continental --policies $H,ppo-continental=models/continental/best_model.zip": ("parse", "evaluate.py"),
    "pip install -e '.[export,router]'": ("twin", ".ci/run"),
    "python -m agents.export runs/metro_maskable_ppo_s0 --out exported/metro": ("twin", "tests/agents/test_export.py"),
    "python -m gridenv.router serve --policy models/metro/onnx --port 8090": ("twin", "tests/router/test_server.py::test_example_request_file_with_the_readme_curl"),
    "curl -s localhost:8090/healthz": ("twin", "tests/router/test_server.py::test_example_request_file_with_the_readme_curl"),
    "curl -s -X POST localhost:8090/v1/route -d @examples/route_request.json": ("twin", "tests/router/test_server.py::test_example_request_file_with_the_readme_curl"),
    "curl -s -X POST localhost:8090/v1/route -d @examples/route_request_prefix.json": ("twin", "tests/router/test_server.py::test_example_request_with_block_hashes_with_the_readme_curl"),
    "curl -s localhost:8090/openapi.json": ("twin", "tests/router/test_server.py"),
    "python -m gridenv.router bench --policy models/metro/onnx": ("twin", "tests/router"),
    "python evaluate.py --suite standard --backend ray --workers 2": ("parse", "evaluate.py"),
    "python train.py --backend ray --seeds 0,1,2": ("parse", "train.py"),
    "python train.py --backend ray --sweep configs/sweeps/ppo_lr_ent.yaml --seeds 0,1": ("parse", "train.py"),
    "python -m agents.bench_backends": ("twin", "tests/agents/test_backends.py"),
    "python -m pytest -q": ("twin", ".ci/run"),
    "python -m pytest -q tests/bad_inputs": ("twin", "tests/bad_inputs"),
}


def test_every_readme_command_is_checked():
    missing = [c for c in _commands() if c not in COMMANDS]
    assert not missing, f"README commands without a check in tests/test_readme.py: {missing}"


@pytest.mark.parametrize("cmd", [c for c, how in COMMANDS.items() if how[0] == "twin"])
def test_twin_exists(cmd):
    """The named twin is a real file (and test function, when named)."""
    where = COMMANDS[cmd][1]
    if where.startswith("("):
        return
    path, _, name = where.partition("::")
    target = ROOT / path
    assert target.exists(), where
    if name:
        assert re.search(rf"^def {re.escape(name)}\(", target.read_text(), re.M), where
    if where == ".ci/run":  # the README's test command is what CI runs
        assert "python -m pytest -q" in target.read_text()


@pytest.mark.parametrize("cmd", [c for c, how in COMMANDS.items() if how[0] == "parse"])
def test_script_flags_parse_as_written(cmd):
    """The flags of a train.py / evaluate.py example parse and validate as the script does."""
    script = COMMANDS[cmd][1]
    argv = shlex.split(cmd.replace("$H", H))[2:]
    cls = "TrainArgs" if script == "train.py" else "EvalArgs"
    code = (f"import sys; from agents.arguments import parse, {cls}\n"
            f"parse({cls}, sys.argv[1:], prog={script!r})\n")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("cmd", [c for c, how in COMMANDS.items() if how[0] == "run"])
def test_quick_command_runs_as_written(cmd):
    out = subprocess.run(shlex.split(cmd), cwd=ROOT, capture_output=True, text=True,
                         timeout=COMMANDS[cmd][1])
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("i", [i for i, (lang, _) in enumerate(BLOCKS) if lang == "python"])
def test_python_block_runs_as_written(i):
    code = BLOCKS[i][1]
    excerpt = re.match(r"# excerpt of (\S+)\n", code)
    if excerpt:  # lines quoted from a source file: each must stand there, as written
        source = (ROOT / excerpt.group(1)).read_text()
        for line in code.splitlines()[1:]:
            assert line.strip() in source, f"{excerpt.group(1)} no longer holds: {line}"
        return
    if "../shared" in code and not SHARED.exists():
        pytest.skip(f"the block reads ../shared, absent at {SHARED}")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
