"""Train a (Maskable)PPO router on a gridenv scenario, CleanRL style: read it top to bottom.

    python train.py                                  # metro, MaskablePPO, a few minutes, then a leaderboard
    python train.py --scenario outage --algo ppo --seed 1
    python train.py --scenario path/to/my.yaml       # a scenario file of your own
    python train.py --resume                         # continue runs/metro_maskable_ppo_s0 from its last checkpoint
    python train.py --total-timesteps 2000000 --resume   # ... and extend it to 2M steps
    python train.py --backend ray --seeds 0,1,2      # 3 runs in parallel on Ray, then one leaderboard
    python train.py --backend ray --sweep configs/sweeps/ppo_lr_ent.yaml --seeds 0,1

A run directory (default ``runs/<scenario>_<algo>_s<seed>``, layout in agents/runs.py) holds
the final and the best model with their VecNormalize statistics, checkpoints, TensorBoard logs
(tb/), Monitor CSVs, args.json (arguments, merged hyperparameters, every command that ran it)
and leaderboard/ (the trained agent against the heuristics, unless --no-eval-leaderboard).
A run directory is accepted wherever a policy is: ``evaluate.py --policies ppo=runs/x``.

``--algo ppo`` trains plain PPO without masks: an infeasible site choice is handled by the env's
documented fallback (the request is shed and counted in ``invalid_actions``).
Bad arguments exit with status 2 and one line saying what to fix (--debug: the traceback).
Nothing imports this script: the options are agents.arguments.TrainArgs, the training
agents.training.train, several runs agents.campaign.train_runs.
"""

import shlex
import sys

from agents.arguments import TrainArgs, parse, run_main


def main(args: TrainArgs, explicit: set, command: str):
    # 2. Several runs (seeds, a sweep) or a run on Ray: parallel tasks, then one leaderboard.
    if args.seeds or args.sweep or args.backend != "local":
        from agents.campaign import train_runs

        return train_runs(args, explicit, command)
    # 3. One run here: train, save, and rank it against the heuristics.
    from agents.training import train

    return train(args, explicit, command)


if __name__ == "__main__":  # worker processes are spawned: they must not run this again
    # 1. Arguments: every field of TrainArgs is a flag (tyro), checked (counts > 0, seeds >= 0).
    argv = sys.argv[1:]
    args, explicit = parse(TrainArgs, argv, prog="train.py", description=__doc__.split("\n")[0])
    command = shlex.join(["python", "train.py", *argv])
    run_main("train.py", args.debug, lambda: main(args, explicit, command))
