"""Items stored off the event loop: a thread of their own behind a bounded queue, back-pressure counted.

`put(item)` queues an item for `store(item)`, which runs in the spool's thread
one item after the other and must not raise (it counts its own failures); when
`size` items wait already, `put` waits for room (the receiving loop stops taking
packets meanwhile: they wait in the kernel's buffer, or are dropped there and
counted) and says so, for its caller to count. `drain()` returns once every
queued item is stored. Knows nothing of what an item is or where it goes.
"""

import queue
import threading

SIZE = 16


class Spool:
    def __init__(self, store, size=SIZE, name="writer"):
        self.store = store
        self._queue = queue.Queue(size)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item):
        """Queue `item`; True when the queue was full and this waited for room."""
        try:
            self._queue.put_nowait(item)
            return False
        except queue.Full:
            self._queue.put(item)
            return True

    def depth(self):
        """Items waiting (the one being stored included)."""
        return self._queue.unfinished_tasks

    def drain(self):
        """Wait until every item put so far is stored."""
        self._queue.join()

    def _run(self):
        while True:
            item = self._queue.get()
            try:
                self.store(item)
            finally:
                self._queue.task_done()
