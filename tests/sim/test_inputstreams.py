"""``--input-streams`` (``inputdriver.py``): facts through the real input-stream reader, its Redis failing."""

from __future__ import annotations

import logging
import os
import random
import sys

import pytest

from atp_service.intake.quarantine import Acks, QuarantineStream, drawn_key, run_key, swept_runs_key
from atp_service.intake.runs import SWEPT
from reservation import FactKind, Limits
from reservation import fact as make_fact
from tests.sim import inputgroups
from tests.sim.__main__ import main
from tests.sim.inputcluster import InputsClusterDriver
from tests.sim.inputdriver import GROUP, InputsDriver
from tests.sim.inputfacts import STREAMS
from tests.sim.inputstreams import RedisFaults, SimStreams
from tests.sim.tally import Tally

INPUT_SEEDS = int(os.environ.get("ATP_SIM_INPUT_SEEDS", "8"))
"""Seeds of 60 steps each: about a second."""
PROCESS_SEEDS = 3
"""Seeds of 60 steps each with several processes: about a second."""
TAIL_SEEDS = 6
"""Seeds of 60 steps each with Redis coming back from older data: about two seconds."""


async def test_every_input_entry_is_applied_or_quarantined_once_acknowledged_only_once_durable() -> None:
    """Quarantine scripts, acknowledgements and reads refused or their answers lost, the reader restarted, the process
    killed or stopped and restarted, room restored; a second process reading the group, sending its facts to their
    owner, stopped past claim_idle_ms (its entries claimed) and going on; two streams, entries that are no fact, the
    producer's MAXLEN trimming entries unread and pending, the group deleted (tests/sim/inputchecks.py): every
    acknowledgement finds its fact applied in the log or written to the quarantine stream; at the end every entry is
    acknowledged, none owed, and an entry whose fact has no other entry is applied or quarantined, never both, never
    neither (E6, E8); on_hand the E1 fold of what was produced wherever nothing was quarantined (E3), memory a replay of
    the log (E10)."""
    tally = Tally()
    for seed in range(INPUT_SEEDS):
        await InputsDriver(seed, tally).run(60)
    assert tally.input_entries and tally.input_quarantined and tally.input_faults, tally
    assert tally.input_owed_watched, tally  # entries whose quarantine write failed, watched while their writer lives
    assert tally.input_redelivered and tally.input_reader_restarts, tally
    assert tally.input_other_stops and tally.input_claimed and tally.input_sent, tally
    assert tally.input_dead_lettered and tally.input_trimmed_unread and tally.input_trimmed_pending, tally
    assert tally.input_groups_deleted, tally
    assert tally.crashes and tally.stops and tally.doubt and tally.late_landed, tally


async def test_every_input_entry_is_decided_once_whatever_the_readers_tags_and_their_tokens_go_through() -> None:
    """``--tag-faults`` (``inputtags.py``): the readers' tags refused, in doubt, landing late (past suspends, kills,
    other readers' groups made again), left in flight by cancelled readers, tokens lost alone, Redis back from older
    data with the tokens it held then; one process and three: every entry Redis holds applied, quarantined or
    dead-lettered once, none lost with a group made again at a token's bound (E6, E8, R7)."""
    tally = Tally()
    for seed in range(TAIL_SEEDS):
        await InputsDriver(seed, tally, lose_tail=True, tag_faults=True).run(60)
    for seed in range(PROCESS_SEEDS):
        await InputsClusterDriver(seed, 3, tally, suspends=True, lose_tail=True, tag_faults=True).run(60)
    assert tally.input_tags_failed and tally.input_tags_late and tally.input_tokens_lost, tally
    assert tally.input_groups_deleted and tally.input_made_at_bound and tally.tail_losses, tally


async def test_an_entry_redis_lost_after_a_reader_was_given_it_counts_as_another_entry_of_its_fact() -> None:
    """``--input-streams --processes 2 --lose-tail --clock-skew --clock-jumps --tag-faults --seed 81``: wms/f33 was
    quarantined for want of room; room restored, the producer sent it again, a reader was given the resend, Redis came
    back from older data without it, and the reader applied its fact after the loss (the capacity refusal remembers
    nothing: a resend is a new decision). The check, the resend's entry cut from what the producer sent, took the first
    entry for the fact's only one: both applied and quarantined. An entry Redis lost once a consumer was given it is
    another entry of its fact (``inputchecks.entries_of``)."""
    tally = Tally()
    await InputsClusterDriver(81, 2, tally, lose_tail=True, clock_skew=True, clock_jumps=True,
                              tag_faults=True).run(60)
    assert tally.input_entries_lost and tally.input_quarantined, tally


async def test_a_quarantine_write_that_failed_after_its_group_was_deleted_is_not_watched_as_owed() -> None:
    """``--input-streams --seed 90048``: atp-2 read an entry whose fact its owner quarantined for want of room; the
    group was deleted (the entry pending with atp-2), then atp-2's quarantine write was refused. The watch took the
    write for owed while atp-2 lived, and the fact decided again — by atp-1, which made the group again and read the
    entry — for a finding (E8: quarantined again); but the write, sent again, finds the entry pending nowhere, and the
    group made again delivers it as new: decided again by design (``inputowed.OwedWatch.failed``)."""
    await InputsDriver(90048, Tally()).run(8)


@pytest.mark.parametrize(("seed", "step"), [(2138, 28)])
async def test_the_other_consumers_acknowledgement_landing_after_a_loss_is_judged_by_what_it_was_given(
        seed: int, step: int) -> None:
    """``--input-streams --lose-tail --seed 2138``: an entry whose fact was applied and answered in the tail Redis then
    lost (the fact's log entry and the group's deliveries with it), its XACK landing after the loss, sent by a consumer
    not given the entry since. The fact is lost with the tail, as every change acknowledged after Redis's save is (the
    shard's ``LogDiverged`` says so), and left out of the end's checks (``acked_lost``): a delivery to another consumer
    since is no decision of that XACK. The check tells whose XACK it was by the consumer whose reader's turn sends it
    (``InputsDriver._acker``), as with several processes."""
    tally = Tally()
    await InputsDriver(seed, tally, lose_tail=True).run(step + 1)
    assert tally.input_acked_lost, tally


async def test_a_quarantine_write_of_an_entry_whose_delivery_redis_lost_is_not_watched_as_owed() -> None:
    """``--input-streams --lose-tail --seed 2552``: atp-1 was given pos/f19; Redis came back from a save made before
    that delivery (the entry unread again), atp-1 quarantined the fact from the batch it held, and its quarantine write
    answered -1 (pending to it no more), the answer lost: owed. Written again, -1 again (the reader drops it); the group
    delivered the entry anew and the fact was quarantined again in its log, the quarantine stream holding it once. The
    watch took that for the owed entry decided again (E8); but the write, like one of a group deleted, finds the entry
    pending nowhere and its group delivers it as new: decided again by design (``inputowed.OwedWatch._read_lost``)."""
    await InputsDriver(2552, Tally(), lose_tail=True).run(20)


async def test_a_quarantined_fact_read_from_the_pending_list_as_redis_loses_its_made_again_mark_stays_so() -> None:
    """``--input-streams --lose-tail --seed 549``: pos/f9 was quarantined for want of room; its group deleted, made
    again by atp-2 (marked), atp-1 read it as new and left it pending (its quarantine check refused). atp-1's pass
    over its own pending list read it; Redis came back from a save without the mark before the marks, then asked for in
    a call of their own, were read, and atp-1, no batch in hand, let its mark go: the fact applied with room back, and
    quarantined (E8). The marks are answered with the pending entries now, one script (``again.read_pending``), so no
    restore falls between them (pinned against real Redis: ``test_group_made_again_marks_lost.py``); the seed's run,
    its calls one fewer, holds every invariant."""
    await InputsDriver(549, Tally(), lose_tail=True).run(60)


async def test_a_quarantined_fact_read_again_from_the_pending_list_is_told_by_the_mark_answered_with_it() -> None:
    """``--input-streams --lose-tail --seed 118``: pos/f10, quarantined, delivered again by its group made again and
    read from a reader's own pending list, where that read is the reader's only word of the group's mark: read without
    the marks, the fact was applied, and quarantined (E8). Answered with the entries (``again.read_pending``), it is
    acknowledged as it is."""
    await InputsDriver(118, Tally(), lose_tail=True).run(60)


@pytest.mark.parametrize("others", [["--redis-full", "--processes", "3"], ["--shed", "--processes", "2"],
                                    ["--groups"], ["--settle-faults", "--lose-tail"]])
def test_input_streams_refuse_the_faults_their_driver_does_not_draw(
        others: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``--input-streams`` runs its own driver (one owner process, its own faults): a flag of the other driver's
    beside it was ignored, the run reporting every invariant held for a combination it never ran. It is refused."""
    monkeypatch.setattr(sys, "argv", ["tests.sim", "--input-streams", "--seeds", "1", *others])
    with pytest.raises(SystemExit) as refused:
        main()
    assert refused.value.code == 2
    assert f"not with {others[0]}" in capsys.readouterr().err


@pytest.mark.parametrize(("seed", "processes", "more"), [(0, 2, False), (119, 2, False), (58, 3, True)])
async def test_input_streams_of_processes_whose_redis_comes_back_from_older_data_decide_every_entry_once(
        seed: int, processes: int, more: bool) -> None:
    """``--input-streams --processes 2|3 --lose-tail`` (``inputtail.py``, ``inputcluster.py``): the one Redis behind
    the input streams, the logs and the leases comes back from older data; each group found short is given up and taken
    again from what Redis holds, and the invariants of ``--input-streams --lose-tail`` hold. Seeds the model took for
    findings: 0, an entry quarantined and written in the tail Redis lost, acknowledged after the loss from a read of
    the quarantine stream made before it (lost with the tail, as an applied one is); 119, a lease Redis restored naming
    a process that no longer held its group, renewed by none and never run out in the drain (the group served by
    nobody); 58 (with ``--partition --suspends --new-addresses``), an acknowledgement of a consumer that applied its
    entry before the loss, landing after another consumer was given it again."""
    tally = Tally()
    await InputsClusterDriver(seed, processes, tally, partition=more, suspends=more, new_addresses=more,
                              lose_tail=True).run(60)
    assert tally.tail_losses and tally.input_entries_lost and tally.takeovers, tally
    assert tally.input_entries and tally.input_redelivered and tally.input_sent, tally


@pytest.mark.parametrize(("seed", "processes", "lose_tail"), [(3, 1, False), (5, 2, True), (7, 3, False)])
async def test_input_streams_read_by_processes_whose_clocks_jump_and_disagree(
        seed: int, processes: int, lose_tail: bool) -> None:
    """``--input-streams --clock-jumps`` (and with ``--processes``, ``--clock-skew``; ``inputclocks.py``): each reader
    judges E7 and times its passes by its process's service clock, its host's wall clock off the others' and stepping
    back, or jumping by hours (every clock, or one host's ahead and back): every fact stamped by the world's clock is
    applied or quarantined once, the invariants of ``--input-streams`` hold, and every service clock counts on (R6)."""
    tally = Tally()
    if processes == 1:
        await InputsDriver(seed, tally, lose_tail=lose_tail, clock_jumps=True).run(60)
    else:
        await InputsClusterDriver(seed, processes, tally, lose_tail=lose_tail, clock_skew=True,
                                  clock_jumps=True).run(60)
    assert tally.clock_jumps and (tally.clock_steps_back or processes == 1), tally
    assert tally.input_entries and tally.input_quarantined and tally.input_redelivered, tally


async def test_input_streams_whose_redis_comes_back_from_older_data_decide_every_entry_that_survived_once() -> None:
    """``--input-streams --lose-tail`` (``inputtail.py``): the one Redis behind the input streams, their consumer
    group, the quarantine stream and its keys and the shard logs comes back from older data at a tick, every key at
    once. An entry Redis lost is lost (its producer sends it again or not at all); every entry it kept is applied,
    quarantined or dead-lettered once per what it kept, a shard whose memory holds what Redis lost found short and
    the service restarted, or found holding exactly what Redis holds, by each step's end; every entry done at the end
    (liveness). Dead letters written after Redis's image are lost with it, the entries' acknowledgements too (one
    script): each entry Redis kept is dead-lettered again (``inputchecks.dead_lettered``)."""
    tally = Tally()
    for seed in range(TAIL_SEEDS):
        await InputsDriver(seed, tally, lose_tail=True).run(60)
    assert tally.tail_losses and tally.tail_restarts and tally.input_entries_lost and tally.input_letters_lost, tally
    assert tally.input_entries and tally.input_quarantined and tally.input_redelivered, tally


@pytest.mark.parametrize(("processes", "partition"), [(2, False), (3, True)])
async def test_input_streams_read_by_processes_that_die_pause_and_take_over_each_others_groups(
        processes: int, partition: bool) -> None:
    """``--input-streams --processes 2|3`` (``inputcluster.py``): every process a consumer of the group, applying the
    facts of the groups it owns and sending the others' to their owners, killed (its entries pending to it until it
    starts again or another claims them), paused (its groups taken meanwhile), stopped, handing groups over, and with
    ``--partition`` cut off from the others (sends never sent, or made with their answers lost): the invariants of
    ``--input-streams`` hold (E6, E8, E3, E10), and every shard answers at each step's end."""
    tally = Tally()
    for seed in range(PROCESS_SEEDS):
        await InputsClusterDriver(seed, processes, tally, partition).run(60)
    assert tally.input_entries and tally.input_quarantined and tally.input_sent and tally.input_claimed, tally
    assert tally.kills and tally.process_pauses and tally.takeovers and tally.input_groups_deleted, tally
    assert tally.partition_cuts or not partition, tally
    assert tally.input_owed_watched, tally  # entries whose quarantine write failed, watched while their writer lives


def test_input_streams_take_processes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--input-streams --processes 2`` runs the multi-process driver (it was refused, ecd36cda)."""
    monkeypatch.setattr(sys, "argv", ["tests.sim", "--input-streams", "--processes", "2", "--seed", "1",
                                      "--steps", "5"])
    asyncio_log = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_log, "level", asyncio_log.level)  # main() quiets it: put back after
    assert main() == 0
    assert "all invariants held" in capsys.readouterr().out


@pytest.mark.parametrize(("seed", "processes"), [(17, 2), (335, 3), (406, 3)])
async def test_an_entry_owed_by_its_reader_decided_again_by_design_is_not_taken_for_a_finding(
        seed: int, processes: int) -> None:
    """Seeds the watch of owed quarantine writes (``inputowed``) took for findings under ``--processes``: an entry whose
    group was deleted after its reader read it, made again and delivered again — to another process (17) or to the
    same reader, in a batch of its own (335) — before that reader's quarantine write of it failed, decided again (by
    design: the write finds it pending nowhere); and an entry owed by a process that restarted since (406: room
    restored), which forgot what it owed (by design)."""
    await InputsClusterDriver(seed, processes, Tally()).run(60)


async def test_an_entry_held_when_its_group_was_deleted_and_not_read_again_before_the_next_deletion_is_lost() -> None:
    """``--input-streams --processes 3 --partition --seed 63``: an entry pending to atp@p0 when its group was deleted;
    p0's reader, started since, made it again from the start (so the entry was to come again), and before any reader
    was given it the group was deleted again and made by p2 after the newest entry p2 had read — past the entry, which
    no consumer of the group held then: the check took it for one never acknowledged. An entry held at a deletion and
    not delivered since is held still at the next. Since the group is made again below the oldest entry pending in the
    group when the reader's token was told (``bounds.py``), such an entry comes again (``inputchecks.decided_once``)."""
    await InputsClusterDriver(63, 3, Tally(), partition=True).run(60)


async def test_an_entry_held_when_a_group_was_made_again_unanswered_is_read_again() -> None:
    """``--input-streams --processes 2 --partition --seed 2``: atp@p1 held an entry (its sends failing) when the group
    was deleted; its reader made the group again before it, the script's answer lost, and a pass over its own pending
    list (empty in the new group) let go of the entry's bound; the group deleted again, it was made after the entry,
    never delivered again (``StreamIngestor._create_groups``: where a group starts now set before the make)."""
    await InputsClusterDriver(2, 2, Tally(), partition=True).run(60)


async def test_what_a_dead_process_owed_to_tell_is_told_by_it_started_again_at_the_end() -> None:
    """``--input-streams --processes 2 --partition --seed 2040``: atp@p1's read crossed entries trimmed unread (counted
    in its hash, kept until that consumer tells them, by design) and p1 was dead at the end, never started again: the
    drain waited for a count no reader would tell. Every dead process is started again before the drain."""
    await InputsClusterDriver(2040, 2, Tally(), partition=True).run(60)


@pytest.mark.parametrize(("processes", "first"), [(2, 0), (3, 3)])  # seeds whose runs hold claims
async def test_input_streams_read_by_processes_whose_hosts_are_suspended(processes: int, first: int) -> None:
    """``--input-streams --processes 2|3 --partition --suspends`` (refused before): leases counted on each host's lease
    clock with finite deadlines, half the pauses a suspend of the process's host (past its leases, others taking its
    groups and claiming its entries meanwhile, or for seconds): the woken process's reader and desk go on with what
    they held; the invariants of ``--input-streams`` hold (E6, E8, E3, E10), and the woken process answers no read
    of a group taken meanwhile (R7)."""
    tally = Tally()
    for seed in range(first, first + PROCESS_SEEDS):
        await InputsClusterDriver(seed, processes, tally, partition=True, suspends=True).run(60)
    assert tally.host_suspends and tally.input_claimed and tally.takeovers, tally


@pytest.mark.parametrize(("seed", "processes", "faults"), [(4, 2, False), (155, 3, True)])
async def test_consumers_of_processes_started_at_new_addresses_are_swept_their_counts_told_once(
        seed: int, processes: int, faults: bool) -> None:
    """``--input-streams --processes 2|3 --new-addresses`` (the sweep was never run: every process came back at its
    own address): processes started again at new addresses now and then, or at their first one again; each reader
    sweeps the group after its claims (``intake/departed.py``), its answers lost, two sweepers, owners paused or back
    meanwhile. Every consumer left at the end is a live process's, no owed hash is left, and the entries trimmed
    unread the reads counted are told exactly once, moved by a sweep or not (E6). Seeds whose departed consumers owed
    counts (moved to the sweeper's)."""
    tally = Tally()
    await InputsClusterDriver(seed, processes, tally, partition=faults, suspends=faults, new_addresses=True).run(60)
    assert tally.input_swept and tally.input_swept_owed, tally


async def test_the_sims_quarantine_script_refuses_a_run_swept_and_the_reader_draws_its_run_again() -> None:
    """The simulated Redis follows the write script and the draw (``quarantine._ONCE``, ``runs.DRAW``), as the real
    ``QuarantineStream`` runs them over it: the first draw makes ``…:runs-swept`` (0); a write whose run key a sweep
    deleted (its run at or below its own run swept, ``runs.SWEPT``) lands nothing and leaves its entry pending,
    whenever it lands; ``keep_run`` draws the run again above it, and that run's write lands; a run key Redis lost
    (its run swept below it, whatever the highest swept of all) is taken again by the write, and kept by
    ``keep_run``."""
    redis = SimStreams(RedisFaults(random.Random(0)), lambda stream, entry: None, lambda: 1_700_000_000_000)
    quarantine, stream, name, mark = QuarantineStream("sim:quarantine", 10), STREAMS[0], "atp@p0.1", "mark"
    swept, ran = swept_runs_key(quarantine.stream), run_key(quarantine.stream, GROUP, name)
    drawn = drawn_key(quarantine.stream, GROUP, name)
    redis.xadd(stream, b"1-0", [b"f", b"v"])
    inputgroups.create(redis, stream, GROUP, b"0")
    redis.streams[stream].groups[GROUP].pending[b"1-0"] = [name, 1, 0]
    fact = make_fact("late", "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "", 1_700_000_000_000,
                     Limits(), "event_time_ms")
    run = await quarantine.run_of(redis, GROUP, name, mark)
    assert (run, redis.runs_swept) == (1, {swept: 0})
    del redis.runs[ran]  # a sweep took it while it ran
    redis.runs_swept[swept] = redis.drawn[drawn][SWEPT] = run
    acks = Acks(GROUP, name, [(stream, b"1-0")], run)
    assert await quarantine.write(redis, [(fact, "late")], acks) == [None]
    assert not redis.quarantined and b"1-0" in redis.streams[stream].groups[GROUP].pending
    again = await quarantine.keep_run(redis, GROUP, name, mark)
    assert again == run + 1 and await quarantine.keep_run(redis, GROUP, name, mark) == again
    assert await quarantine.write(redis, [(fact, "late")], acks._replace(run=again)) == [True]
    assert len(redis.quarantined) == 1 and not redis.streams[stream].groups[GROUP].pending
    del redis.runs[ran]  # Redis lost it: its run swept below the run, the highest of all (another's) above it
    redis.runs_swept[swept] = again + 5
    assert await quarantine.keep_run(redis, GROUP, name, mark) == again
    redis.xadd(stream, b"2-0", [b"f", b"v"])
    redis.streams[stream].groups[GROUP].pending[b"2-0"] = [name, 1, 0]
    third = make_fact("third", "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "",
                      1_700_000_000_000, Limits(), "event_time_ms")
    assert await quarantine.write(redis, [(third, "late")], Acks(GROUP, name, [(stream, b"2-0")], again)) == [True]
    assert redis.runs[ran] == again, "a run Redis lost: taken again by the write"


async def test_a_process_swept_while_paused_draws_its_run_again_at_its_next_sweep() -> None:
    """``--input-streams --processes 3 --partition --suspends --new-addresses --seed 77``: a process paused past its
    leases (no member, holding no group, its entries claimed) was taken for gone by a sweeper and its run key deleted
    while it ran; run again, its reader's next sweep draws its run again (``DepartedConsumers.kept_run``, as the
    service's ``step``), else every quarantine write of its run was refused for as long as it ran (E8). Processes
    stopped holding a quarantine write (``inputholds``): the write, landing once its process runs again, is of a run
    swept meanwhile, and lands nothing."""
    tally = Tally()
    await InputsClusterDriver(86, 3, tally, partition=True, suspends=True, new_addresses=True).run(60)
    assert tally.input_runs_redrawn and tally.input_swept_refused and tally.input_stopped_holding, tally


@pytest.mark.parametrize("seed", [20, 21])
async def test_a_process_whose_run_a_sweep_took_while_it_was_stopped_decides_its_entries_again(seed: int) -> None:
    """``--input-streams --processes 3 --partition --suspends --new-addresses``, seeds that reach a run swept while
    its process was stopped holding a quarantine write. Two findings of the model this guards: a process swept while
    suspended ran again and read an entry; its quarantine write of the swept run, its answer lost, owed, was refused
    when written again (-1: the stream holds no such fact, and no write of that run lands later) — the entry,
    pending still, read again and decided again by its own process, as a claimer decides it: no second decision of
    what landed (``inputowed``); and a reader whose every pass over its own pending entries left one (its writes
    refused) never claimed, so never swept and drew its run again: the drain's turns run a claim drawn after the
    pass, as ``step`` runs it once the pass set its next after a wait (liveness)."""
    tally = Tally()
    await InputsClusterDriver(seed, 3, tally, partition=True, suspends=True, new_addresses=True).run(60)
    assert tally.input_swept_refused and tally.input_stopped_holding, tally
