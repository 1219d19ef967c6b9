import logging
import os

from celery import Celery
from celery.signals import worker_init, worker_process_shutdown, worker_ready, worker_shutdown
from celery.utils.threads import bound_open_broker_sockets
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.consumer import COLLECT_SOCKET_TIMEOUT

log = logging.getLogger(__name__)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tandem")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _metrics_start(sender, **kwargs):
    """Clean the metrics directory of processes gone before this one counts (config/metrics.py)."""
    from config.metrics import process_started

    process_started()


@worker_ready.connect
def _metrics_serve(sender, **kwargs):
    """A worker in a container of its own answers Prometheus itself (METRICS_WORKER_PORT)."""
    from django.conf import settings

    if settings.METRICS_WORKER_PORT:
        from config.metrics import serve_worker_metrics

        serve_worker_metrics(settings.METRICS_WORKER_PORT)


@worker_shutdown.connect
def _metrics_stop(sender, **kwargs):
    from config.metrics import process_exiting

    process_exiting()


@worker_process_shutdown.connect
def _metrics_child_stop(sender, pid=None, **kwargs):
    """A prefork pool's child going away (the default pool is threads: one process)."""
    from config.metrics import process_exiting

    process_exiting(pid)


@worker_init.connect
def _warm_up(sender, **kwargs):
    """Import litellm in the background as the worker starts, not during the first reply."""
    import threading

    def warm() -> None:
        from assistant.llm import warm_up

        warm_up()

    threading.Thread(target=warm, name="litellm-warm-up", daemon=True).start()


@worker_ready.connect
def _start_sweeper(sender, **kwargs):
    """Runs whose worker died (no heartbeat) are failed, with their partial text kept."""
    from assistant.runner import start_sweeper

    start_sweeper()


@worker_ready.connect
def _start_heartbeat(sender, **kwargs):
    """Say every few seconds that this worker is alive: /readyz and the worker's health check
    read it (config/readiness.py)."""
    from config.readiness import start_worker_heartbeat

    start_worker_heartbeat()


@worker_shutdown.connect
def _stop_heartbeat(sender, **kwargs):
    from config.readiness import stop_worker_heartbeat

    stop_worker_heartbeat()


class Consumer(CeleryConsumer):
    """Celery's consumer, surviving a Redis that restarts while tasks are running.

    On a lost broker connection Celery 5.7 first ``collect()``s the connection, which detaches
    kombu's Redis transport from it, then closes it; closing the task channel restores the
    unacknowledged messages of the running tasks (acks_late), which needs the detached
    transport's address: AttributeError ('NoneType' object has no attribute 'hostname'),
    "Unrecoverable error", and the worker exited once its running replies had finished
    (bench/cluster.py's Redis restart). Closing the connection first, while it still knows its
    address, leaves nothing for that path to trip on. The replies still running then finish
    and would be acknowledged through the closed channel: the same AttributeError, from the
    event loop. Their delivery belonged to the lost connection, so they are counted as
    acknowledged here: the close gave them back to Redis if it kept them (a run already
    claimed is not run twice) or Redis lost them (the runs' sweeper queues a lost run again).
    Celery then reconnects as usual (CELERY_BROKER_CONNECTION_MAX_RETRIES=None: for as long as
    it takes).
    """

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        from celery.worker import state

        for request in (*state.active_requests, *state.reserved_requests):
            request.acknowledged = True
        connection = self.connection
        if connection is not None:
            bound_open_broker_sockets(connection, COLLECT_SOCKET_TIMEOUT)
            try:
                connection.close()
            except Exception:  # the broker is gone: what could not be restored is logged
                log.warning("Closing the lost broker connection failed", exc_info=True)
        super().on_connection_error_after_connected(exc)
