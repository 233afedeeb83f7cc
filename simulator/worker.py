"""One simulated service's consumer: a real member of the stage's consumer group.

Like the pipeline's services it reads a batch from the stage's request topic, writes the
outputs of every request, waits until Kafka has them, and only then commits the batch's
offsets (at-least-once: a crash replays, never loses). Pausing keeps the member in its group
but stops fetching, so lag builds up the way it does behind a stalled service.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from pipeline.config import KafkaSettings
from pipeline.kafka import client_log
from pipeline.kafka import producer as make_producer
from simulator.stages import Outcome, StageBehaviour, StageLogic

log = logging.getLogger("treewatch.simulator.worker")

BATCH_SIZE = 100
POLL_SECONDS = 0.2
# A batch in progress when a pause is asked for finishes first; its delays are at most this long.
PAUSE_SECONDS = 30.0
# A slow stage takes smaller batches, so it still commits every few seconds and never comes near
# max.poll.interval.ms (after which Kafka would take its partitions away).
BATCH_SECONDS = 5.0
# Longest wait for Kafka to confirm a batch's outputs, and for the rest of them when closing.
FLUSH_SECONDS = 30.0
CLOSE_FLUSH_SECONDS = 10.0
# stop() waits this long: a flush in progress, then the close's flush and leaving the group.
STOP_SECONDS = FLUSH_SECONDS + CLOSE_FLUSH_SECONDS + 20.0


@dataclass
class WorkerStats:
    """Requests the worker finished, by outcome (counted after their commit)."""

    completed: int = 0
    failed: int = 0
    invalid: int = 0
    batches_replayed: int = 0

    def add(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)


class WorkerStuck(RuntimeError):
    """A worker did not stop in time; the message says what it was still doing."""


class DeliveryFailed(RuntimeError):
    """Kafka did not confirm every output of a batch; the batch must be processed again."""


class StageWorker:
    def __init__(self, kafka: KafkaSettings, logic: StageLogic,
                 behaviour: Callable[[], StageBehaviour], seed: int | None = None,
                 observe: Callable[[str, float], None] | None = None) -> None:
        self.logic = logic
        # Told (stage, seconds) per processed request: the services' own processing-time metrics.
        self._observe = observe
        self.stage = logic.stage
        self._behaviour = behaviour
        self._rng = random.Random(seed)
        self._kafka = kafka
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._holding_now = threading.Event()  # set by the loop once a pause has taken hold
        self._assigned = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"simulator-{self.stage.name}", daemon=True)
        self._lock = threading.Lock()
        self._stats = WorkerStats()
        self._delivery_errors: list[str] = []
        self._holding = False  # whether the assignment is currently paused by us
        self.error: BaseException | None = None
        self._doing = "starting"  # what the loop is busy with, for the error when it will not stop

    # -- control -------------------------------------------------------------------------------

    def start(self) -> None:
        self._consumer = Consumer({
            **self._kafka.client_config(),
            "logger": client_log,
            "group.id": self.stage.group,
            "client.id": f"treewatch-simulator-{self.stage.name}",
            "enable.auto.commit": False,
            # Requests written before the group first joined are work too, as for the real services.
            "auto.offset.reset": "earliest",
        })
        self._producer: Producer = make_producer(self._kafka, **{"linger.ms": 5})
        self._consumer.subscribe([self.stage.request_topic], on_assign=self._on_assign)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to finish its batch and close its clients; stop() waits for it."""
        self._stop.set()

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop the loop and wait until it has closed its consumer and producer.

        Raises WorkerStuck when it is still busy after ``timeout``. The clients are not closed
        from here then: the loop's thread may be inside one of their calls, and closing a
        librdkafka handle under a call in progress is a use-after-free (a crash, not an error).
        The thread closes them itself as soon as that call returns.
        """
        self.request_stop()
        if not self._thread.is_alive():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("simulated %s service still busy %gs after stop (%s); its Kafka clients close "
                      "when that returns", self.stage.name, timeout, self._doing)
            raise WorkerStuck(f"the simulated {self.stage.name} service did not stop within {timeout:g}s: "
                              f"still {self._doing} (is Kafka at {self._kafka.bootstrap_servers} reachable?)")

    def pause(self, timeout: float = PAUSE_SECONDS) -> bool:
        """Stop fetching, and return once the loop has stopped (True) or after ``timeout`` (False):
        a request written after a pause returns is not processed before the resume, even when the
        loop was in the middle of a fetch that would have brought it back."""
        self._holding_now.clear()
        self._paused.set()
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return False
        return self._holding_now.wait(timeout)

    def resume(self) -> None:
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_assigned(self, timeout: float) -> bool:
        """True once the group has given this member its partitions."""
        return self._assigned.wait(timeout)

    def stats(self) -> WorkerStats:
        with self._lock:
            return WorkerStats(**vars(self._stats))

    # -- the loop ------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._paused.is_set():
                    self._idle_paused()
                    continue
                if self._holding:
                    self._release()
                self._doing = "fetching requests"
                messages = self._consumer.consume(self._batch_size(), timeout=POLL_SECONDS)
                batch = [m for m in messages if self._usable(m)]
                if batch:
                    self._handle(batch)
        except Exception as error:  # the worker is gone: say why once, loudly, and keep the reason
            self.error = error
            log.exception("simulated %s service stopped", self.stage.name)
        finally:
            self._close()

    def _batch_size(self) -> int:
        delay = self._behaviour().delay_seconds
        return BATCH_SIZE if delay <= 0 else max(1, min(BATCH_SIZE, int(BATCH_SECONDS / delay)))

    def _idle_paused(self) -> None:
        # Paused partitions stay assigned (the member stays in the group, heartbeating) but are
        # not fetched; anything already fetched is put back for after the resume.
        # Pausing again every round also covers partitions a rebalance assigned meanwhile.
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)
        self._holding = True
        self._holding_now.set()
        prefetched = [m for m in self._consumer.consume(BATCH_SIZE, timeout=POLL_SECONDS) if self._usable(m)]
        self._rewind(prefetched)

    def _release(self) -> None:
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.resume(assignment)
        self._holding = False

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        log.warning("%s consumer: %s", self.stage.name, error)
        return False

    def _handle(self, batch: list[Message]) -> None:
        self._delivery_errors = []
        outcomes: list[Outcome] = []
        for message in batch:
            behaviour = self._behaviour()
            started = time.monotonic()
            if behaviour.delay_seconds and self._stop.wait(behaviour.delay_seconds):
                self._rewind(batch)  # stopping mid-batch: nothing of it is committed
                return
            key = message.key()
            outcome = self.logic.process(message.value(), behaviour, self._rng,
                                         key.decode("utf-8", errors="replace") if key is not None else None)
            if self._observe is not None:
                self._observe(self.stage.name, time.monotonic() - started)
            outcomes.append(outcome)
            for record in outcome.records:
                self._produce(record.topic, record.key, record.value)
        try:
            self._doing = "waiting for Kafka to confirm a batch's outputs"
            self._flush()
        except DeliveryFailed as error:
            log.warning("%s: %s; processing the batch again", self.stage.name, error)
            with self._lock:
                self._stats.batches_replayed += 1
            self._rewind(batch)
            return
        try:
            self._doing = "committing a batch's offsets"
            self._consumer.commit(asynchronous=False)
        except KafkaException as error:
            # Typically a rebalance took the partitions away: their new owner replays the batch.
            log.warning("%s: commit failed (%s); the batch will be delivered again", self.stage.name, error)
            return
        with self._lock:
            for outcome in outcomes:
                self._stats.add(outcome.status)

    def _produce(self, topic: str, key: str | None, value: dict) -> None:
        payload = json.dumps(value).encode()
        while True:
            try:
                self._producer.produce(topic, payload, key=key.encode() if key else None,
                                       on_delivery=self._delivered)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)

    def _delivered(self, error: object, message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(str(error))

    def _flush(self) -> None:
        remaining = self._producer.flush(FLUSH_SECONDS)
        errors = self._delivery_errors
        if remaining:
            raise DeliveryFailed(f"{remaining} outputs still unconfirmed after {FLUSH_SECONDS:g}s")
        if errors:
            raise DeliveryFailed(f"{len(errors)} outputs not written (first: {errors[0]})")

    def _rewind(self, messages: list[Message]) -> None:
        """Seek back to the first of ``messages`` per partition, so they are read again."""
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            first[key] = min(first.get(key, message.offset()), message.offset())
        for (topic, partition), offset in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as error:  # the partition was revoked meanwhile: its new owner reads it
                log.debug("%s: rewind of %s[%d] skipped: %s", self.stage.name, topic, partition, error)

    def _close(self) -> None:
        self._doing = "closing its Kafka clients"
        try:
            if self._producer.flush(CLOSE_FLUSH_SECONDS):
                # Outputs of a batch that was never committed: dropping them loses nothing, the
                # batch is delivered again. Kept, they would hold the producer's close up.
                self._producer.purge()
            self._producer.close()
        finally:
            # close() leaves the group at once, so the exporter sees it Empty, not a ghost member.
            self._consumer.close()
            self._doing = "stopped"
