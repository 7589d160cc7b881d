"""One run transition asked of its participants stage by stage, in their `order`, with deferrals and take-backs.

A stage is the participants with equal `order`, asked together: lower numbers first on the way up (prepare,
begin, resume), higher first on the way down (end, pause, abort). Each participant answers within the
transition's timeout, or says it is still at work (`_progress` to the request, with `fraction` and `text`): it
then holds the stage up to its own `defer_limit`; past it, it fails the transition or is gone past, as its
`past_limit` says. One lost while it defers (its client gone) no longer holds anything. A refusal stops the
stages after it and takes back the ones before, in reverse order: whoever had done the transition is told its
inverse. An abort goes through every stage whatever anyone answers. Must not touch the run book: the run desk
concludes from what this gathered.
"""

import time

from runcontrol import protocol

GO_ON = "go_on"
TEXT_MAX = 200
# What takes back a transition a participant had done, when a later stage refused: one step, or two one after the
# other (an end taken back in a paused run: begin again, then pause).
INVERSE = {"prepare": [("end", {"abort": True})], "begin": [("end", {"abort": True})], "pause": [("resume", {})],
           "resume": [("pause", {})], "end": [("begin", {"rejoin": True})]}
PAUSED_END_INVERSE = [("begin", {"rejoin": True}), ("pause", {"rejoin": True})]


def stages_of(participations, up):
    """The participants' names (`participations`: name -> Participation) grouped by equal order, lower orders
    first when `up`, higher first otherwise."""
    orders = sorted({p.order for p in participations.values()}, reverse=not up)
    return [sorted(n for n, p in participations.items() if p.order == order) for order in orders]


def progress_of(msg):
    """The `fraction` (0 to 1, or None) and `text` of a participant's `_progress`, whatever it sent."""
    fraction = msg.get("fraction")
    fraction = float(fraction) if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) \
        and 0 <= fraction <= 1 else None
    text = msg.get("text")
    return fraction, text[:TEXT_MAX] if isinstance(text, str) else ""


class StagedTransition:
    """Asks `ask` (a `_transition` message) of `participations` stage by stage; calls `done(self)` once every
    stage has answered (or the first refusing stage and its take-backs have), `on_progress(self, name)` when a
    participant reports progress."""

    def __init__(self, client, waiters, ask, participations, up, timeout_s, stops_on_refusal, on_progress, done,
                 window=500, paused=False, defer_cap_s=None):
        """`window`: the most requests of a stage awaiting answers at once (the server refuses a client more than
        its `max_pending`); the others go out as answers come in. `paused`: the run is paused (an end taken back
        leaves its participants paused again). `on_progress(self, name)` also comes with name None as each stage
        or take-back begins, so that whoever waits knows the transition goes on."""
        self.client, self.waiters, self.ask = client, waiters, ask
        self.defer_cap_s = defer_cap_s   # no deferral longer than this (a stop of the experiment will not wait)
        self.inverse = PAUSED_END_INVERSE if paused and ask["transition"] == "end" else INVERSE[ask["transition"]]
        self.window = max(1, window)
        self.participations = participations
        self.stages = stages_of(participations, up)
        self.timeout_s = timeout_s
        self.stops_on_refusal = stops_on_refusal
        self.on_progress, self.done = on_progress, done
        self.answers = {}        # name -> protocol.Answer
        self.holders = {}        # name -> {"fraction", "text", "since"}: deferring now
        self.deferred = {}       # name -> seconds it deferred, once it answered or was given up on
        self.problems = {}       # name -> what went wrong, in words
        self.blocking = []       # the names whose problem fails the transition
        self.failed_stage = None
        self.taken_back = []     # {"transition", "names", "problems"} per stage taken back, in the order done
        self.stage = -1
        self._pendings = {}
        self._settled = set()    # names whose outcome is decided: a later answer (already on its way) changes nothing
        self._unsent = []
        self._done_here = 0
        self._deadlines = {}
        self._waiter = None

    @property
    def names(self):
        return sorted(self.participations)

    def start(self):
        self._next_stage()

    def status(self):
        """Where it is, for the status: the stage, who it still waits for, who defers and how far along."""
        stage = self.stages[self.stage] if 0 <= self.stage < len(self.stages) else []
        return {"stage": self.stage + 1, "stages": len(self.stages),
                "waiting": [n for n in stage if n not in self._settled], "holders": dict(self.holders),
                "taking_back": self.failed_stage is not None}

    def lost(self, name, why):
        """`name`'s client is gone (lost, left, or a new process registered under its name): if it was deferring,
        it holds nothing any more; otherwise its answer is awaited as usual (the server answers for it)."""
        pending = self._pendings.get(name)
        if pending is None or name in self._settled or name not in self.holders:
            return
        self.client.abandon(pending)
        self._answered(name, protocol.Answer(pending.id, False, error=why, code=protocol.CLIENT_LOST))

    # --- the stages --------------------------------------------------------------------------------------

    def _next_stage(self):
        self.stage += 1
        if self.stage >= len(self.stages):
            self.done(self)
            return
        names = self.stages[self.stage]
        now = self.waiters.clock()
        self._started = now
        self._deadlines = {name: now + self.timeout_s for name in names}
        self._pendings, self._unsent, self._done_here = {}, list(reversed(names)), 0
        self._send_more()
        if self.stage:
            self.on_progress(self, None)
        self._waiter = self.waiters.add(lambda: self._settle_overdue(names), self._stage_done, self.timeout_s,
                                        self._stage_done)

    def _settle_overdue(self, names):
        """Give up on each participant past its own deadline (another's deferral gives it no more time); whether
        every one of the stage is settled."""
        now = self.waiters.clock()
        for name in [n for n in self._pendings if n not in self._settled and now >= self._deadlines[n]]:
            self._give_up(name)
        return not self._unsent and len(self._settled & set(names)) == len(names)

    def _send_more(self):
        while self._unsent and len(self._pendings) - self._done_here < self.window:
            name = self._unsent.pop()
            self._pendings[name] = self.client.start(
                {"to": name, **self.ask}, on_progress=lambda msg, n=name: self._progressed(n, msg),
                on_answer=lambda answer, n=name: self._answered(n, answer))

    def _progressed(self, name, msg):
        if name in self._settled or name not in self._pendings:
            return
        fraction, text = progress_of(msg)
        held = self.holders.get(name)
        self.holders[name] = {"fraction": fraction, "text": text, "since": held["since"] if held else time.time()}
        limit = max(self.timeout_s, self.participations[name].defer_limit_s)
        if self.defer_cap_s is not None:
            limit = min(limit, max(self.timeout_s, self.defer_cap_s))
        self._deadlines[name] = self._started + limit
        if self._waiter is not None:
            self._waiter.deadline = max(self._deadlines[n] for n in self._pendings if n not in self.answers)
        self.on_progress(self, name)

    def _answered(self, name, answer):
        # An answer the client had read before `lost()` or the stage's end abandoned its request still comes here.
        if name in self._settled or name not in self._pendings:
            return
        self._settled.add(name)
        self.answers[name] = answer
        self._done_here += 1
        self._send_more()
        held = self.holders.pop(name, None)
        if held is not None:
            self.deferred[name] = round(time.time() - held["since"], 3)
            if answer.code == protocol.CLIENT_LOST:   # gone while it deferred: it holds nothing any more
                self.problems[name] = f"lost while deferring ({answer.error})"
                return
        if not answer.ok:
            self._problem(name, describe_problem(answer))

    def _stage_done(self):
        self._waiter = None
        for name in self._unsent:   # never sent: the others of its stage held every place until the end
            self._problem(name, "not asked: the others of its stage held the transition past its time")
        self._unsent = []
        for name in list(self._pendings):
            self._give_up(name)
        if self.blocking and self.stops_on_refusal:
            self.failed_stage = self.stage
            done_here = [n for n in self.stages[self.stage] if n in self.answers and self.answers[n].ok]
            back = [stage for stage in self.stages[:self.stage]] + [done_here]
            self._take_back([[n for n in stage if n not in self.problems] for stage in reversed(back)])
            return
        self._next_stage()

    def _give_up(self, name):
        """No answer from `name` in its time (the timeout, or its defer_limit once it deferred): silent, or
        deferred past its limit."""
        if name in self._settled:
            return
        self._settled.add(name)
        self._done_here += 1
        self.client.abandon(self._pendings[name])
        held = self.holders.pop(name, None)
        if held is None:
            self._problem(name, describe_problem(None))
            return
        self.deferred[name] = round(time.time() - held["since"], 3)
        participation = self.participations[name]
        said = f"{held['text']}, " if held["text"] else ""
        done = f"{held['fraction']:.0%} done" if held["fraction"] is not None else "no fraction said"
        words = f"deferred past its limit of {participation.defer_limit_s:g} s ({said}{done})"
        if participation.past_limit == GO_ON:
            self.problems[name] = f"{words}: gone on without it"
        else:
            self._problem(name, words)

    def _problem(self, name, words):
        self.problems[name] = words
        self.blocking.append(name)

    # --- taking back ---------------------------------------------------------------------------------------

    def _take_back(self, stages):
        """Tell each of `stages` (names, latest stage first) the inverse transition, one stage after the other."""
        stages = [stage for stage in stages if stage]
        if not stages:
            self.done(self)
            return
        self._take_back_stage(stages[0], self.inverse, lambda: self._take_back(stages[1:]))

    def _take_back_stage(self, names, steps, then):
        """The first of `steps` to `names`, the next ones each to those that accepted the one before; then `then`."""
        (transition, extra), later = steps[0], steps[1:]
        ask = protocol.make_transition(transition, self.ask["run"], comment=self.ask.get("comment"),
                                       params=self.ask.get("params"), reason="a later stage refused", **extra)
        answers = {}
        pendings = {name: self.client.start({"to": name, **ask}, on_answer=lambda a, n=name: answers.__setitem__(n, a))
                    for name in names}
        self.on_progress(self, None)

        def finish():
            for name, pending in pendings.items():
                if name not in answers:
                    self.client.abandon(pending)
            self.taken_back.append({"transition": transition, "names": names,
                                    "problems": {n: describe_problem(answers.get(n)) for n in names
                                                 if n not in answers or not answers[n].ok}})
            accepted = [n for n in names if n in answers and answers[n].ok]
            if later and accepted:
                self._take_back_stage(accepted, later, then)
            else:
                then()
        self.waiters.add(lambda: len(answers) == len(names), finish, self.timeout_s, finish)


def describe_problem(answer):
    """What a participant's answer to a transition (None: no answer) says went wrong."""
    if answer is None:
        return "silent (no answer in time)"
    if answer.code == protocol.NO_SUCH_CLIENT:
        return "silent (not registered)"
    if answer.code == protocol.CLIENT_LOST:
        return f"lost ({answer.error})"
    if answer.from_server:
        return f"not asked: the server said {answer.error}"
    return f"refused: {answer.error}"
