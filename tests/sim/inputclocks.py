"""``--input-streams --clock-skew`` / ``--clock-jumps``: the hosts' clocks under the input-stream drivers
(``inputdriver.py``, ``inputcluster.py``), as ``driver.Driver`` draws them: each host's wall clock off the world's
within ``skew.SKEW_BOUND_MS`` and stepping back or forward (several processes), a clock jumping by hours at a tick
of a step (``jumps.py``). The readers judge E7 and time their passes by their process's service clock (as
``AtpService`` builds them); Redis's clock (``claim_idle_ms``, the stream ids) is the world's. Facts are stamped by
the world's clock: a host behind it by the skew finds them that far ahead, inside E7's allowed skew (5 min); a host
hours ahead finds them hours old, inside the run's grace window (ten years, ``world.sim_config``). With
``--fact-times`` some are stamped about the allowed skew ahead (``inputfacts``): refused by one clock, taken by
another."""

from __future__ import annotations

from tests.sim.cluster import ClusterWorld
from tests.sim.skew import SkewedHosts
from tests.sim.tally import Tally
from tests.sim.world import World


def draw_clocks(world: World, step: int, trace: list[str], tally: Tally) -> None:
    """At a step's start: a host's wall clock stepped back or forward (``--clock-skew``), the step's jump drawn."""
    if isinstance(world, ClusterWorld) and world.skew is not None:
        step_skew(world.skew, step, trace, tally)
    if world.jumps is not None and (jump := world.jumps.draw()):
        trace.append(f"{step}: {jump}")


def step_skew(skew: SkewedHosts, step: int, trace: list[str], tally: Tally) -> None:
    """At a step's start (``--clock-skew``): a host's wall clock stepped back, one stepped forward."""
    if stepped := skew.maybe_step_back():
        trace.append(f"{step}: {stepped}")
        tally.clock_steps_back += 1
    if stepped := skew.maybe_step_forward():
        trace.append(f"{step}: {stepped}")
        tally.clock_steps_forward += 1


def end_clocks(world: World) -> None:
    """The step's calls over: a jump drawn past its last tick does not happen."""
    if world.jumps is not None:
        world.jumps.end_step()


def clocks_counted(world: World, tally: Tally) -> None:
    """R6: every host's service clock counted on at the world's monotonic rate, its wall clock jumped or not; and
    (``--clock-skew`` alone: a jump sets a clock hours ahead) no group's clock ahead of every host's bound."""
    if world.jumps is not None:
        world.jumps.counted()
    elif isinstance(world, ClusterWorld) and world.skew is not None:
        world.skew.leads(world.every, tally)
