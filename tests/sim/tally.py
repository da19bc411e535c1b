"""How many faults of each kind a simulation run injected: a run that held every invariant only
says something if the faults did happen, so ``python -m tests.sim`` prints these."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Tally:
    cancelled: int = 0  # callers that gave up before their answer came
    cancelled_pending: int = 0  # ... while appends waited for Redis's answer
    cancelled_paused: int = 0  # ... during a write pause
    late_landed: int = 0  # scripts that reached Redis after their caller was told they failed
    late_refused: int = 0  # such scripts refused on arrival (fence, epoch, stream's newest id)
    pauses: int = 0  # Redis write pauses
    crashes: int = 0
    stops: int = 0  # graceful stops (then a restart)
    lost: int = 0  # appends answered "not landed"
    doubt: int = 0  # appends that landed, their caller told they failed
    late: int = 0  # appends answered "timed out", still on their way
    snapshot_parts: int = 0  # script calls of snapshots written in parts
    staging_lost: int = 0  # staging keys of snapshots in parts lost between two parts
    snapshot_refused: int = 0  # snapshot script calls refused on arrival (fence, epoch, offset, log's end)
    snapshot_pieces: int = 0  # snapshots put in place in several keys (``snapshot_piece_bytes``)
    pieces_refused: int = 0  # snapshot script calls refused PIECES (named for another count of stored keys)
    channel_faults: int = 0  # channel writes lost, in doubt or late
    channel_late_landed: int = 0
    cross_shard: int = 0  # commands spanning shards (reserves, SHIPMENTs naming a reservation)
    sagas: int = 0  # of those reserves, on a cluster (odd seeds): orders decided by sagas
    stream_parts: int = 0  # ``--forward-streams``: outbound ReserveStreams opened to owners (``streams.py``)
    stream_items: int = 0  # ... ReserveStream items their owners answered
    stream_doubts: int = 0  # ... items told OUTCOME_UNKNOWN by an outbound stream that failed
    stream_faults: int = 0  # ... outbound parts lost, late, or their answers lost (``streamcall.py``)
    group_lines: int = 0  # ``--groups``: Reserve lines naming a location group, answered granted
    group_splits: int = 0  # ... of them, granted from two members or more
    tail_losses: int = 0  # Redis restarted from older data (``--lose-tail``)
    tail_restarts: int = 0  # ... and the service stopped to be restarted (several processes: a group given up)
    channel_relinks: int = 0  # ... and the channel desk read every channel again (``ChannelDesk._relink``)
    node_losses: int = 0  # ... of one Redis Cluster node only (several processes)
    owner_check_stops: int = 0  # shards the owner check found short and stopped (several processes)
    # several processes (``--processes``):
    takeovers: int = 0  # groups taken (owner epoch raised, recovered, installed)
    hand_overs: int = 0  # groups handed over gracefully (drained, final snapshot, lease given back)
    given_up: int = 0  # groups a process found lost (a write refused FENCED, or its lease gone)
    fenced_writes: int = 0  # writes of a deposed owner refused FENCED (appends, fences, snapshots)
    kills: int = 0
    process_pauses: int = 0
    remote_steps: int = 0  # order steps answered by another process
    remote_lost: int = 0  # ... whose request or reply was lost
    remote_late: int = 0  # ... served late (or by a paused process once it ran again)
    remote_moved: int = 0  # ... answered GROUP_MOVED (the peer no longer owned the group)
    forwarded: int = 0  # calls forwarded to a group's owner
    located: int = 0  # calls for a reservation held elsewhere, asked of every owner
    id_claims: int = 0  # reservation id claims sent (``ids.py``)
    id_claim_faults: int = 0  # ... lost, in doubt or late
    id_claims_refused: int = 0  # ... that found the id claimed by another home group
    # hosts' clocks disagreeing (``--clock-skew``):
    clock_steps_back: int = 0  # a host's wall clock stepped back
    clock_steps_forward: int = 0  # ... stepped forward
    leads_passed: int = 0  # taken groups' clocks ahead of their process's that a forward step of its host passed
    taken_ahead: int = 0  # groups taken whose log was stamped ahead of the taker's clock (a GroupClock gap)
    clock_jumps: int = 0  # ``--clock-jumps``: a clock jumped by hours mid-step (``jumps.py``)
    host_suspends: int = 0  # ``--suspends``: a host suspended, past its leases or not (``suspends.py``)
    stale_reads_refused: int = 0  # ``--suspends``: a group a woken process no longer answered for (``suspends.py``)
    partitions: int = 0  # ``--partition``: two processes cut off from each other over gRPC (``partition.py``)
    partition_cuts: int = 0  # ... calls across one cut (order steps, forwarded calls, stream parts)
    oom_refused: int = 0  # writes a full Redis refused OOM (``--redis-full``: appends, channel writes, id claims)
    # load shed (``--shed``):
    shed_spans: int = 0  # spans of a step's rounds in which shards (or a process's door) shed
    shed_refused: int = 0  # messages a shard shed (its mailbox full, its queue late, a backlog)
    shed_calls: int = 0  # calls (and ReserveStream items) answered RESOURCE_EXHAUSTED for load
    shed_retries: int = 0  # ... Reserves of those sent again with the same id (R5)
    # facts stamped in the future or late (``--fact-times``):
    fact_within: int = 0  # within fact_future_skew_ms ahead of the clock (E7: applied)
    fact_past: int = 0  # past it (E7: refused)
    fact_late: int = 0  # before stream time minus grace (E6: quarantined)
    # a settle's own calls failing (``--settle-faults``):
    fence_faults: int = 0  # fences lost, in doubt or late
    late_fences: int = 0  # ... of those late, that landed past the token their shard went on with
    settle_reads_failed: int = 0  # reads of a settle (the log's end, its entries) timed out
    # a grace window of seconds (``--short-grace``, ``shortgrace.py``):
    forgets: int = 0  # maintenance passes that forgot remembered identities (E8)
    forgotten: int = 0  # ... identities forgotten
    seals: int = 0  # open maps sealed into the columns
    sealed: int = 0  # ... identities sealed
    freed: int = 0  # kept deltas freed (E9)
    old_known: int = 0  # resends stamped before the clock minus grace answered DUPLICATE (remembered still)
    old_late: int = 0  # resends of applied facts answered late (forgotten, E6)
    graces_grown: int = 0  # instances started with a longer grace than the one before (one process)
    forgotten_inside: int = 0  # ... shards started having forgotten inside the window (``forgotten_before``)
    # facts through the input-stream reader (``--input-streams``, ``inputdriver.py``):
    input_entries: int = 0  # input entries appended
    input_quarantined: int = 0  # ... of those with no other entry of their fact, quarantined
    input_faults: int = 0  # Redis reads, pipelines and quarantine scripts refused or their answers lost
    input_owed: int = 0  # steps ending with quarantine writes owed
    input_owed_watched: int = 0  # entries whose quarantine write failed, watched while their writer lived
    input_redelivered: int = 0  # entries delivered again from the reader's own pending list
    input_passes_cut: int = 0  # passes over a reader's pending entries cut short (``PENDING_PASS_S``)
    input_reader_restarts: int = 0  # the reader stopped and started again (the process running on)
    input_other_stops: int = 0  # the other process (a second consumer of the group) stopped (SIGSTOP) a while
    input_claimed: int = 0  # pending entries one consumer took over from the other (XAUTOCLAIM)
    input_sent: int = 0  # sends of facts from the other process to their owner (its answer lost or not)
    input_dead_lettered: int = 0  # input entries dead-lettered (no fact, or trimmed while pending)
    input_dead_letters_again: int = 0  # ... dead letters written again for an entry that had one
    input_groups_deleted: int = 0  # consumer groups deleted (XGROUP DESTROY) while the readers ran
    input_lost_with_group: int = 0  # ... entries the other consumer held, trimmed before they came again
    input_quarantined_elsewhere: int = 0  # ... entries quarantined, delivered again to a reader that did not make it
    input_refused_ahead: int = 0  # ... entries with no other entry of their fact, dead-lettered as stamped ahead (E7)
    input_refusals_elsewhere: int = 0  # ... refusals (E7) not written: the entry delivered elsewhere before the script
    input_trimmed_unread: int = 0  # input entries trimmed before any consumer read them
    input_trimmed_pending: int = 0  # input entries trimmed after a consumer read them
    input_entries_lost: int = 0  # input entries Redis lost coming back from older data (``inputtail``)
    input_acked_lost: int = 0  # ... entries it kept, acknowledged from memory it lost before the instance noticed
    input_letters_lost: int = 0  # ... dead letters it lost, their entries kept: dead-lettered again (``inputtail``)
    input_swept: int = 0  # consumers of processes gone from their address removed by a sweep (``inputsweep``)
    input_swept_owed: int = 0  # ... entries trimmed unread they owed, moved to the sweeper's count
    input_runs_redrawn: int = 0  # ... runs of live processes swept all the same, drawn again (``keep_run``)
    input_swept_refused: int = 0  # ... quarantine writes of a run swept, refused (``quarantine._ONCE``)
    input_stopped_holding: int = 0  # ... processes stopped holding a quarantine write past their sweep (``inputholds``)
    input_tags: int = 0  # the readers' tags (``bounds._TAG``) run (``inputtags``)
    input_tags_failed: int = 0  # ... refused, in doubt or landing late
    input_tags_late: int = 0  # ... landed late
    input_letters_late: int = 0  # dead letters' scripts landed late (``--late-letters``, ``inputletters``)
    input_fences_late: int = 0  # ... fence settings landed late
    input_tokens_lost: int = 0  # consumers' tokens lost alone, their streams kept
    input_made_at_bound: int = 0  # groups made again at the bound of the token Redis held (else from the start)

    def count_outcome(self, outcome: str) -> None:
        if outcome in ("lost", "doubt", "late"):
            setattr(self, outcome, getattr(self, outcome) + 1)

    def late_arrived(self, landed: bool) -> None:
        if landed:
            self.late_landed += 1
        else:
            self.late_refused += 1

    def add(self, other: Tally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        return (f"{self.cancelled} cancellations ({self.cancelled_pending} with appends pending, "
                f"{self.cancelled_paused} in write pauses), late landings {self.late_landed} landed / "
                f"{self.late_refused} refused, {self.pauses} write pauses, {self.crashes} crashes, "
                f"{self.stops} graceful stops, "
                f"appends {self.lost} lost / {self.doubt} in doubt / {self.late} late, "
                f"{self.snapshot_parts} snapshot parts ({self.staging_lost} staging keys lost, "
                f"{self.snapshot_refused} snapshot scripts refused; {self.snapshot_pieces} stored in several keys, "
                f"{self.pieces_refused} calls refused PIECES), "
                f"{self.channel_faults} channel writes failed ({self.channel_late_landed} landed late), "
                f"{self.cross_shard} cross-shard commands ({self.sagas} reserves as sagas on a cluster)"
                + (f"; {self.group_lines} group lines granted ({self.group_splits} over several members)"
                   if self.group_lines else "")
                + (f"; {self.oom_refused} writes refused OOM" if self.oom_refused else "")
                + (f"; {self.clock_jumps} clock jumps by hours" if self.clock_jumps else "")
                + (f"; {self.host_suspends} hosts suspended ({self.stale_reads_refused} reads of groups refused on "
                   "waking)" if self.host_suspends else "")
                + (f"; load shed in {self.shed_spans} spans: {self.shed_refused} messages shed, {self.shed_calls} "
                   f"calls refused, {self.shed_retries} reserves sent again" if self.shed_spans else "")
                + (f"; facts stamped {self.fact_within} within the skew / {self.fact_past} past it / "
                   f"{self.fact_late} late" if self.fact_within + self.fact_past + self.fact_late else "")
                + (f"; settles: {self.fence_faults} fences failed ({self.late_fences} landed late), "
                   f"{self.settle_reads_failed} reads timed out"
                   if self.fence_faults + self.settle_reads_failed else "")
                + (f"; forgetting: {self.forgets} passes forgot {self.forgotten} identities, {self.seals} seals of "
                   f"{self.sealed}, {self.freed} kept deltas freed; old resends {self.old_known} known / "
                   f"{self.old_late} late; {self.graces_grown} graces grown, {self.forgotten_inside} shards started "
                   f"with what they forgot inside the window" if self.forgets + self.seals + self.freed else "")
                + (f"; input streams: {self.input_entries} entries ({self.input_quarantined} quarantined), "
                   f"{self.input_faults} Redis calls failed, {self.input_owed} steps with writes owed "
                   f"({self.input_owed_watched} entries whose write failed watched), "
                   f"{self.input_redelivered} entries delivered again ({self.input_passes_cut} passes cut short), "
                   f"{self.input_reader_restarts} reader restarts, "
                   f"{self.input_other_stops} stops of the other process, {self.input_claimed} entries claimed from "
                   f"the other consumer, {self.input_sent} sends to the owner, {self.input_dead_lettered} entries "
                   f"dead-lettered ({self.input_dead_letters_again} again), {self.input_trimmed_unread} entries "
                   f"trimmed unread, {self.input_trimmed_pending} trimmed once read, {self.input_groups_deleted} "
                   f"groups deleted ({self.input_lost_with_group} entries the other consumer held trimmed before they "
                   f"came again, "
                   f"{self.input_quarantined_elsewhere} quarantined ones delivered again to another reader)"
                   + (f", {self.input_swept} departed consumers swept ({self.input_swept_owed} entries owed moved)"
                      if self.input_swept else "")
                   + (f", {self.input_runs_redrawn} runs swept while running drawn again "
                      f"({self.input_swept_refused} writes of swept runs refused, {self.input_stopped_holding} "
                      "processes stopped holding a quarantine write)"
                      if self.input_runs_redrawn or self.input_swept_refused or self.input_stopped_holding else "")
                   + (f", {self.input_refused_ahead} entries refused as stamped in the future (E7; "
                      f"{self.input_refusals_elsewhere} refusals not written, their entries delivered elsewhere)"
                      if self.input_refused_ahead or self.input_refusals_elsewhere else "")
                   + (f", {self.input_tags} tags ({self.input_tags_failed} failed, {self.input_tags_late} landed "
                      f"late, {self.input_tokens_lost} tokens lost alone; {self.input_made_at_bound} groups made "
                      "again at a token's bound)" if self.input_tags else "")
                   + (f", {self.input_letters_late} dead letters and {self.input_fences_late} fence settings landed "
                      "late"
                      if self.input_letters_late or self.input_fences_late else "")
                   if self.input_entries else "")
                + (f"; Redis lost a tail {self.tail_losses} times, {self.tail_restarts} restarts, "
                   f"{self.channel_relinks} channel relinks" if self.tail_losses else "")
                + (f" ({self.input_entries_lost} input entries lost, {self.input_acked_lost} kept acknowledged from "
                   f"memory it lost before the instance noticed, {self.input_letters_lost} dead letters lost of "
                   "entries kept)" if self.input_entries_lost else "")
                + (f" ({self.node_losses} losses of one node; {self.owner_check_stops} shards stopped by the "
                   "owner check)" if self.tail_losses and self.takeovers else "")
                + (self.processes_summary() if self.takeovers else ""))

    def processes_summary(self) -> str:
        return (f"; processes: {self.takeovers} takeovers, {self.hand_overs} hand-overs, {self.given_up} groups given "
                f"up, {self.fenced_writes} writes refused FENCED, {self.kills} kills, {self.process_pauses} pauses, "
                f"order steps {self.remote_steps} remote / "
                f"{self.remote_lost} lost / {self.remote_late} late / {self.remote_moved} moved, "
                f"{self.forwarded} calls forwarded ({self.stream_parts} streams to owners: "
                f"{self.stream_items} items answered, "
                f"{self.stream_doubts} in doubt, {self.stream_faults} faults), {self.located} located, "
                f"id claims {self.id_claims} "
                f"({self.id_claim_faults} failed, {self.id_claims_refused} found another home)"
                + (f"; partitions: {self.partitions} ({self.partition_cuts} calls cut)" if self.partitions else "")
                + (f"; clocks: {self.clock_steps_back} steps back, {self.clock_steps_forward} forward, "
                   f"{self.taken_ahead} groups taken from a clock ahead, {self.leads_passed} such leads passed"
                   if self.clock_steps_back or self.taken_ahead else ""))
