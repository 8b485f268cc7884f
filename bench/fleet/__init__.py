"""The fleet (`invoke fleet`): one profile's study on a pool of hosts through Ray.

Each host (a Ray node) runs the bundle's own path (`invoke up bench report down`) in its own checkout
(TR116_ROOT) with its own engines; a host agent actor (agent.py) surveys the host first and ships every
finished run folder to the head's ResultSink actor (actors.py) as it appears, so a host that dies keeps
what it finished. The driver (driver.py) refuses hosts that differ in harness commit or model identity,
seeds each host's study with the runs the head already holds (a rerun resumes only the missing ones),
and writes fleet.json and the fleet report (report.py: compare's report with host as the factor).
Shard mode (shard.py) spreads one study's runs over identical hosts and merges them into one study
with the host of every run.
Nothing outside this folder imports ray (the optional `fleet` extra).
"""
