"""Policies for gridenv: heuristic baselines from production LLM routers, PPO training,
evaluation into a leaderboard, and export for request routers.

Importing ``agents`` (or any heuristic) never imports torch: a router host need not carry it.
"""
