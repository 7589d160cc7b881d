"""The client core without I/O, fed by a driver that keeps what it sends in lists (as the asyncio one feeds it from
its loop), and the core alone, which hands out frames and notices and calls nothing.

These are unit tests of the core; each behaviour is also tested end to end, over a real server process and real
sockets:

- a welcome registers and flushes what was queued, in order: test_client.py
  test_server_killed_and_restarted_client_reregisters_and_queue_arrives,
  test_request_made_while_server_away_is_delivered_after_restart
- a refused hello is the error and leaves the client unregistered: test_client.py
  test_second_live_client_with_same_name_gets_name_taken
- handlers answer, refuse, and name a missing field or command: test_client.py test_request_returns_handler_result,
  test_handler_refusal_keeps_its_code, test_missing_field_is_refused_as_bad_field,
  test_unknown_command_refused_naming_what_is_offered
- a ping is answered at once, with its id: test_reliability.py
  test_an_idle_client_answers_the_servers_pings_and_keeps_its_registration_past_the_timeout; test_client.py
  test_second_live_client_with_same_name_gets_name_taken (a holder that answers the server's probe keeps its name;
  that the answer names the probe's id shows only in how soon the claimant is refused, a duration no test asserts)
- run hooks follow transitions: test_runs.py test_a_full_run_cycle
- what the connection does not take waits in the outbox: test_client.py
  test_server_killed_and_restarted_client_reregisters_and_queue_arrives
- a deferred answer goes out once: test_reliability.py
  test_a_repeat_of_a_request_still_being_worked_on_is_answered_once_when_done
- a refusal raised by a run hook is the answer: test_runs.py test_a_refusing_participant_keeps_the_state_and_is_named
- unanswered requests go out again with their ids: test_reliability.py
  test_a_request_sent_into_a_dying_server_is_sent_again_to_the_next
- a repeated request is answered again without a second run, another sender's id is its own: test_reliability.py
  test_a_foreign_client_sending_its_unanswered_request_again_after_a_restart_gets_one_run_and_its_answer,
  test_a_request_in_flight_when_the_server_dies_runs_once_and_is_answered_once
- a repeat of a request still being worked on is answered once, when done: test_reliability.py
  test_a_repeat_of_a_request_still_being_worked_on_is_answered_once_when_done
- the answer memory forgets past its window, count and bytes (driven by its clock seam, not a ListDriver test): its
  use end to end, a repeat answered from memory, is in test_reliability.py as above; its limits are tested here only
- the core alone hands out what to send and says what happened: every test of test_client.py drives it so, the
  blocking driver in test_request_returns_handler_result, the asyncio one in
  test_the_asyncio_driver_wakes_on_its_sockets_its_timers_and_its_stop
- pongs and hellos go at once or never, and the outbox keeps the newest, dropping the oldest: test_client.py
  test_queue_overflow_drops_oldest_and_logs_count; test_reliability.py
  test_an_idle_client_answers_the_servers_pings_and_keeps_its_registration_past_the_timeout
"""

import orjson
import pytest

from runcontrol.client.core import ClientCore, required
from runcontrol.client.notices import Answered, Incoming, Registered
from runcontrol.client.program import Program
from runcontrol import protocol
from runcontrol.errors import Refused


class ListDriver(Program):
    """A driver whose connection is lists: what went out at once (hellos apart), what went out in order, and
    whether the connection takes more."""

    def __init__(self, name, **kwargs):
        self.sent, self.raw, self.hellos, self.open, self.refused = [], [], [], True, None
        super().__init__(name, **kwargs)

    def _send_out(self):
        for data in self.core.urgent_to_send():
            msg = orjson.loads(data)
            (self.hellos if msg["cmd"] == "_hello" else self.raw).append(msg)
        frames = self.core.data_to_send()
        if self.open:
            self.sent.extend(orjson.loads(data) for data in frames)
        else:
            self.core.not_sent(frames)

    def _on_refused(self, error):
        self.refused = error

    def welcome(self, instance="i1"):
        self.deliver(welcome_to(self.hellos[-1], instance))

    def deliver(self, msg):
        self._feed_frame(protocol.encode(msg))


def welcome_to(hello, instance):
    return protocol.make_reply(hello["id"], protocol.make_welcome(hello["name"], instance, 0.5, 3.0,
                                                                  "tcp://127.0.0.1:9"))


class Board(ListDriver):
    def cmd_ramp(self, msg):
        """Ramp the bias."""
        return {"volts": required(msg, "volts")}

    def on_begin(self, run):
        self.began = (run.number, run.comment, run.params)


@pytest.fixture
def board():
    board = Board("board")
    board._hello()
    board.welcome()
    return board


def test_a_welcome_registers_and_flushes_what_was_queued_in_order():
    core = ListDriver("early")
    core.send("other", "note", seq=1)
    pending = core.start({"to": "other", "cmd": "ask"})
    assert core.sent == [] and not core.registered
    core._hello()
    core.welcome("abc")
    assert core.registered and core.instance == "abc" and core.timeout_s == 3.0
    assert [(m["cmd"], m.get("seq")) for m in core.sent] == [("note", 1), ("ask", None)]
    core.deliver({"cmd": "_reply", "re": pending.id, "ok": True, "result": 5, "from": "other"})
    assert pending.answer.value() == 5


def test_a_refused_hello_is_kept_as_the_error_and_leaves_it_unregistered():
    core = ListDriver("twin")
    core._hello()
    core.deliver(protocol.make_error(protocol.NAME_TAKEN, "held by a live client", core.hellos[-1]["id"]))
    assert not core.registered and core.refused.code == "name_taken"


def test_handlers_answer_refuse_and_name_what_is_missing(board):
    board.deliver({"cmd": "ramp", "id": 1, "from": "op", "volts": 30})
    board.deliver({"cmd": "ramp", "id": 2, "from": "op"})
    board.deliver({"cmd": "melt", "id": 3, "from": "op"})
    answers = {m["re"]: m for m in board.sent}
    assert answers[1] == {"cmd": "_reply", "re": 1, "ok": True, "result": {"volts": 30}, "to": "op"}
    assert (answers[2]["ok"], answers[2]["code"]) == (False, "bad_field")
    assert "'ramp' needs the field 'volts'" in answers[2]["error"]
    assert answers[3]["code"] == "unknown_command" and "it offers: ramp" in answers[3]["error"]


def test_a_ping_is_answered_at_once_with_its_id(board):
    board.deliver({"cmd": "_ping", "id": "probe-1", "from": "server"})
    board.deliver({"cmd": "_ping", "from": "server"})
    assert board.raw == [{"cmd": "_pong", "re": "probe-1"}, {"cmd": "_pong"}]


def test_run_hooks_follow_transitions(board):
    board.deliver({**protocol.make_transition("prepare", 12), "id": "t1", "from": "run"})
    board.deliver({**protocol.make_transition("begin", 12, comment="dark", params={"s": 2}), "id": "t2",
                   "from": "run"})
    assert (board.run_state, board.run_number, board.began) == ("RUN", 12, (12, "dark", {"s": 2}))
    assert [m["result"] for m in board.sent] == [{"state": "READY", "run": 12}, {"state": "RUN", "run": 12}]


def test_while_the_connection_takes_nothing_messages_wait_in_the_outbox(board):
    board.open = False
    board.send("other", "note", seq=1)
    board.send("other", "note", seq=2)
    assert board.sent == [] and len(board.core.outbox) == 2
    board.open = True
    board._send_out()
    assert [m["seq"] for m in board.sent] == [1, 2]


def test_a_deferred_answer_goes_out_once(board):
    held = []
    board.add_handler("slow", lambda msg: held.append(board.defer(msg)) or held[-1])
    board.deliver({"cmd": "slow", "id": 9, "from": "op"})
    assert board.sent == []
    held[0].progress(done=0.5)
    held[0].resolve("ok")
    held[0].resolve("again")
    assert [(m["cmd"], m.get("result")) for m in board.sent] == [("_progress", None), ("_reply", "ok")]


def test_a_refusal_raised_by_a_hook_is_the_answer(board):
    def refuse(run):
        raise Refused("the CCDs are warm", "not_ready")
    board.on_prepare = refuse
    board.deliver({**protocol.make_transition("prepare", 13), "id": "t", "from": "run"})
    assert (board.sent[-1]["ok"], board.sent[-1]["code"]) == (False, "not_ready")
    assert board.run_state == "STOP"


def test_after_registering_again_unanswered_requests_go_out_again_with_their_ids(board):
    answered = board.start({"to": "other", "cmd": "a"})
    lost = board.start({"to": "other", "cmd": "b"})
    board.deliver({"cmd": "_reply", "re": answered.id, "ok": True, "result": 1, "from": "other"})
    board._unregister()  # the server went away ...
    board.send("other", "note", seq=7)  # ... what is sent meanwhile waits
    board._hello()
    board.welcome("i2")  # ... and a new instance welcomed it
    resent = board.sent[-2:]
    assert [(m["cmd"], m.get("id"), m.get("seq")) for m in resent] == [("b", lost.id, None), ("note", None, 7)]
    assert [m.get("id") for m in board.sent].count(answered.id) == 1


def test_a_repeated_request_is_answered_again_without_running_the_handler_twice(board):
    runs = []
    board.add_handler("count", lambda msg: runs.append(1) or len(runs))
    board.deliver({"cmd": "count", "id": 5, "from": "op"})
    board.deliver({"cmd": "count", "id": 5, "from": "op"})  # resent after a server restart
    board.deliver({"cmd": "count", "id": 5, "from": "other"})  # another requester's id 5 is another request
    assert runs == [1, 1]
    assert [(m["to"], m["result"]) for m in board.sent] == [("op", 1), ("op", 1), ("other", 2)]


def test_a_repeat_of_a_request_still_being_worked_on_is_answered_once_when_done(board):
    held = []
    board.add_handler("slow", lambda msg: held.append(board.defer(msg)) or held[-1])
    board.deliver({"cmd": "slow", "id": 9, "from": "op"})
    board.deliver({"cmd": "slow", "id": 9, "from": "op"})
    assert len(held) == 1 and board.sent == []
    held[0].resolve("done")
    board.deliver({"cmd": "slow", "id": 9, "from": "op"})
    assert [m["result"] for m in board.sent] == ["done", "done"]
    assert len(held) == 1


def test_the_answer_memory_forgets_the_oldest_past_its_window_count_and_bytes_but_never_work_in_progress():
    from runcontrol.client.requests import AnswerMemory
    now = [0.0]
    memory = AnswerMemory(window_s=10, size=3, max_bytes=100, clock=lambda: now[0])
    assert memory.begin(("op", 1)) and memory.begin(("op", 2))
    memory.answered(("op", 1), b"one")
    now[0] = 11.0
    assert memory.begin(("op", 3))  # forgets ("op", 1): past the window
    assert memory.begin(("op", 1)) and not memory.begin(("op", 2))  # 2 is still being worked on
    for n in range(4, 8):
        memory.begin(("op", n))
        memory.answered(("op", n), b"x" * 40)
    assert [memory.answer_of(("op", n)) is not None for n in range(4, 8)] == [False, False, True, True]  # bytes
    assert not memory.begin(("op", 2))


def test_the_core_alone_hands_out_what_to_send_and_says_what_happened():
    core = ClientCore("bare", "daq1", actions={"ramp": "Ramp the bias."})
    core.post({"to": "other", "cmd": "note"})
    assert (core.urgent_to_send(), core.data_to_send()) == ([], [])   # unregistered: the note waits
    core.hello()
    [hello] = [orjson.loads(data) for data in core.urgent_to_send()]
    assert (hello["cmd"], hello["host"], hello["actions"]) == ("_hello", "daq1", {"ramp": "Ramp the bias."})
    registered = core.receive(protocol.encode(welcome_to(hello, "i1")))
    assert type(registered) is Registered and registered.welcome.instance == "i1" and core.registered
    assert [orjson.loads(data)["cmd"] for data in core.data_to_send()] == ["note"]
    assert core.receive(protocol.encode({"cmd": "_ping", "id": "p1", "from": "server"})) is None
    assert [orjson.loads(data) for data in core.urgent_to_send()] == [{"cmd": "_pong", "re": "p1"}]
    request = {"cmd": "ramp", "id": 4, "from": "op"}
    assert core.receive(protocol.encode(request)) == Incoming(request)
    core.answer("op", protocol.make_reply(4, 30))
    pending = core.start({"to": "op", "cmd": "ask"})
    assert [orjson.loads(data).get("re") for data in core.data_to_send()] == [4, None]
    answered = core.receive(protocol.encode({"cmd": "_reply", "re": pending.id, "ok": True, "result": 1}))
    assert answered == Answered(pending) and pending.answer.value() == 1


def test_frames_for_now_are_never_kept_and_the_outbox_keeps_the_newest():
    core = ClientCore("small", "daq1", queue_size=3)
    for seq in range(5):
        core.post({"to": "other", "cmd": "note", "seq": seq})
    core.receive(protocol.encode({"cmd": "_ping", "from": "server"}))
    core.hello()
    hello = orjson.loads(core.urgent_to_send()[-1])
    assert core.urgent_to_send() == [] and len(core.outbox) == 3   # handed out once: sent or dropped
    core.receive(protocol.encode(welcome_to(hello, "i1")))
    frames = core.data_to_send()
    assert [orjson.loads(data)["seq"] for data in frames] == [2, 3, 4]
    core.not_sent(frames[1:])   # the connection took only the first
    core.post({"to": "other", "cmd": "note", "seq": 5})
    assert [orjson.loads(data)["seq"] for data in core.data_to_send()] == [3, 4, 5]
