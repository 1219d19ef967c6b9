"""Writes for conversations, messages and runs. Events are published only after commit."""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts import audit
from accounts.models import Team, User
from config.db import db_sync_to_async, release_now

from . import events, hooks, streams
from .errors import ChatError
from .models import (
    FINISHED_STATUSES,
    Conversation,
    Message,
    RepoJob,
    RepoJobKind,
    RepoJobStatus,
    Repository,
    Role,
    Run,
    RunStatus,
    ToolCall,
    ToolCallStatus,
)

log = logging.getLogger(__name__)

TITLE_CHARS = 80
IN_FLIGHT = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING)
JOB_PENDING = (RepoJobStatus.QUEUED, RepoJobStatus.RUNNING)


class RunInFlight(ChatError):
    """A conversation that works on a repository takes one request at a time."""


BUSY = (
    "The assistant is still working on this conversation's repository (a reply is queued, "
    "running or waiting for an approval). Wait until it has finished, or stop it, then send "
    "this again."
)


@functools.cache
def _has_repository_sql() -> str:
    """Whether a conversation has a workspace, or one being attached. Written out: building
    and compiling the ORM's Exists(…) | Exists(…) cost ~1.2 ms of CPU, the query itself
    ~0.1 ms, and every message sent pays it (docs/benchmarks.md, issue 14)."""
    from .models import Workspace

    pending = ", ".join(["%s"] * len(JOB_PENDING))
    return (
        f"SELECT EXISTS (SELECT 1 FROM {Workspace._meta.db_table} WHERE conversation_id = %s)"  # noqa: S608 (the models' own table names)
        f" OR EXISTS (SELECT 1 FROM {RepoJob._meta.db_table} WHERE conversation_id = %s"
        f" AND kind = %s AND status IN ({pending}))"
    )


def refuse_while_in_flight(conversation: Conversation) -> None:
    """RunInFlight when the conversation has a repository and a run that is not finished.
    Locks the conversation's row until the transaction ends, so two requests cannot both pass
    and start two runs on one workspace."""
    # A workspace being prepared counts: the runs sent meanwhile wait for it, then run on it.
    # Both looked at in one query: this runs before every message.
    pending = [str(status) for status in JOB_PENDING]  # a TextChoices' str is its value
    params: list[int | str] = [conversation.id, conversation.id, str(RepoJobKind.ATTACH), *pending]
    with connection.cursor() as cursor:
        cursor.execute(_has_repository_sql(), params)
        (has_repository,) = cursor.fetchone()
    if not has_repository:
        return
    Conversation.objects.select_for_update().filter(pk=conversation.pk).first()
    if Run.objects.filter(conversation_id=conversation.pk, status__in=IN_FLIGHT).exists():
        raise RunInFlight(BUSY)


# Inline Markdown a title shows as plain words: [text](url), **bold**, *em*, `code`, ~~gone~~.
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_MARKS = re.compile(r"(\*\*|__|~~|`+)(.+?)\1")
_MD_EMPHASIS = re.compile(r"(?<![\w*])([*_])(?=\S)(.+?)(?<=\S)\1(?![\w*])")


def _title_from(content: str) -> str:
    first_line = next((line.strip() for line in content.splitlines() if line.strip()), "")
    first_line = first_line.lstrip("#>*- ").strip()
    first_line = _MD_LINK.sub(r"\1", first_line)
    first_line = _MD_MARKS.sub(r"\2", first_line)
    first_line = _MD_EMPHASIS.sub(r"\2", first_line).strip()
    if len(first_line) > TITLE_CHARS:
        first_line = first_line[: TITLE_CHARS - 1].rstrip() + "…"
    return first_line


def conversation_create(*, team: Team, author: User, title: str = "") -> Conversation:
    title = title.strip()[:200]
    return Conversation.objects.create(
        team=team, created_by=author, title=title, title_is_custom=bool(title)
    )


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    title = title.strip()
    if not title:
        raise ChatError("A title cannot be empty.")
    if len(title) > 200:
        raise ChatError("A title can have at most 200 characters.")
    conversation.title = title
    conversation.title_is_custom = True
    conversation.save(update_fields=["title", "title_is_custom"])
    events.publish_on_commit(str(conversation.uuid), events.conversation_renamed(conversation))
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    conversation_id = str(conversation.uuid)
    for run in conversation.runs.filter(status__in=IN_FLIGHT):
        streams.request_cancel(str(run.uuid))
    conversation.delete()
    events.publish_on_commit(conversation_id, {"t": "conversation.deleted"})


def validate_content(content: str) -> str:
    if not content.strip():
        raise ChatError("Write a message first.")
    if len(content) > settings.MAX_MESSAGE_CHARS:
        raise ChatError(
            f"This message has {len(content):,} characters; the limit is "
            f"{settings.MAX_MESSAGE_CHARS:,}. Shorten it or split it into parts."
        )
    if "\x00" in content:
        raise ChatError("This message contains a NUL character, which cannot be stored.")
    return content


@dataclass
class Sent:
    message: Message
    run: Run


@transaction.atomic
def message_send(*, conversation: Conversation, author: User, content: str, api_key=None) -> Sent:
    """Save the user's message and a queued run in one transaction; after commit, tell the
    viewers and start the run. ``api_key``: the key an API request came with (metered per key).
    Refused (errors.BudgetExceeded, a ChatError) when the team's budget or the author's
    tokens for today are used up."""
    content = validate_content(content)
    refuse_while_in_flight(conversation)
    hooks.meter().check(team=conversation.team, user=author)
    now = timezone.now()
    message = Message.objects.create(
        conversation=conversation, role=Role.USER, author=author, content=content, created=now
    )
    run = Run.objects.create(
        conversation=conversation,
        user_message=message,
        requested_by=author,
        created=now,
        api_key=api_key,
    )
    # A run made just now has no reply yet: say so, or reading it (the API's answer) queries.
    Run.assistant_message.related.set_cached_value(run, None)
    fields = ["updated"]
    conversation.updated = now
    if not conversation.title_is_custom and not conversation.title:
        conversation.title = _title_from(content)
        fields.append("title")
    conversation.save(update_fields=fields)
    _announce_and_enqueue(conversation, message, run, title_changed="title" in fields)
    return Sent(message, run)


def _announce_and_enqueue(
    conversation: Conversation, message: Message, run: Run, *, title_changed: bool = False
) -> None:
    from .runner import enqueue_run

    conversation_id = str(conversation.uuid)
    # What follows the commit is Redis and the broker: the request's connection goes back to
    # the pool first. At 200 messages at once on a busy machine, POSTs held their connection
    # through this and the ones queued behind them timed out (docs/benchmarks.md, issue 14).
    transaction.on_commit(release_now)
    events.publish_on_commit(conversation_id, events.message_created(message, run))
    if title_changed:
        events.publish_on_commit(conversation_id, events.conversation_renamed(conversation))
    transaction.on_commit(lambda: enqueue_run(str(run.uuid)))


@transaction.atomic
def run_retry(*, run: Run, author: User) -> Run:
    """A new run answering the same user message; the failed one stays as it was."""
    if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise ChatError("Only a failed or stopped reply can be retried.")
    conversation = run.conversation
    refuse_while_in_flight(conversation)
    new_run = Run.objects.create(
        conversation=conversation, user_message=run.user_message, requested_by=author
    )
    from .runner import enqueue_run

    events.publish_on_commit(
        str(conversation.uuid),
        {
            "t": "run.queued",
            "run": events.run_data(new_run),
            # Viewers put the new reply under the message it answers, not at the bottom.
            "reply_to": str(run.user_message.uuid),
        },
    )
    transaction.on_commit(lambda: enqueue_run(str(new_run.uuid)))
    return new_run


def run_cancel(*, run: Run) -> None:
    """Stop a run. A queued run is cancelled here; a running one is told through the shared
    cancel flag, and its executor stops within a fraction of a second, keeping the partial
    text."""
    stopped = Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
        status=RunStatus.CANCELLED, finished=timezone.now()
    )
    if stopped:
        events.publish_sync(
            str(run.conversation.uuid),
            {"t": "run.cancelled", "run": str(run.uuid), "message": None},
        )
        return
    if cancel_waiting(run):
        return
    if Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).exists():
        streams.request_cancel(str(run.uuid))


def cancel_waiting(run: Run) -> bool:
    """Stop a run parked for an approval: no worker holds it, so it is finished here, keeping
    the text it had written. Whether this call stopped it."""
    run.refresh_from_db(fields=["text", "status", "tree_before"])
    stopped, message = _finish(
        run,
        status=RunStatus.CANCELLED,
        text=run.text,
        error="",
        from_status=RunStatus.WAITING,
    )
    if not stopped:
        return False
    if run.tree_before:
        # Its files are read (and its diff stored) in the worker, not here.
        from . import jobs

        jobs.enqueue("finish_stopped", str(run.uuid))
    ToolCall.objects.filter(
        run=run,
        status__in=[ToolCallStatus.PENDING, ToolCallStatus.AWAITING, ToolCallStatus.APPROVED],
    ).update(status=ToolCallStatus.CANCELLED, finished=timezone.now())
    events.publish_sync(
        str(run.conversation.uuid),
        {
            "t": "run.cancelled",
            "run": str(run.uuid),
            "message": events.message_data(message) if message else None,
            "refresh": True,
        },
    )
    return True


class Decision:
    APPROVE = "approve"
    DENY = "deny"
    ALWAYS = "always"  # approve, and allowlist the command for the team (admins only)


def tool_call_decide(*, call: ToolCall, user: User, decision: str, is_admin: bool) -> ToolCall:
    """A member's answer to a command awaiting approval. Recorded once (who, when); the run
    is queued again when nothing else of it awaits a decision."""
    from . import policy
    from .runner import enqueue_run

    if decision not in (Decision.APPROVE, Decision.DENY, Decision.ALWAYS):
        raise ChatError("Choose Approve or Deny.")
    if decision == Decision.ALWAYS and not is_admin:
        raise ChatError("Only team admins can allow a command for good.")
    if decision == Decision.ALWAYS and call.name != "run_command":
        # Another tool's arguments may have a "command" too: it must not reach the allowlist.
        raise ChatError(
            "Only commands can be allowed for good. Approve this call; a team admin sets how "
            "the team's own tools ask on the Tools page."
        )
    run = call.run
    with transaction.atomic():
        approved = decision != Decision.DENY
        now = timezone.now()
        decided = ToolCall.objects.filter(pk=call.pk, status=ToolCallStatus.AWAITING).update(
            status=ToolCallStatus.APPROVED if approved else ToolCallStatus.DENIED,
            decided_by=user,
            decided_at=now,
            finished=None if approved else now,
        )
        if not decided:
            call.refresh_from_db()
            raise ChatError(_already_decided(call))
        audit.record(
            audit.Action.COMMAND_APPROVED if approved else audit.Action.COMMAND_DENIED,
            team=run.conversation.team,
            actor=user,
            obj=call,
            object_type="command",
            label=str(_json_object(call.arguments).get("command", "") or call.name),
            after={"decision": decision, "run": str(run.uuid)},
        )
        if decision == Decision.ALWAYS:
            args = _json_object(call.arguments)
            try:
                policy.allow_always(run.conversation.team, str(args.get("command", "")))
            except ValueError as exc:
                raise ChatError(f"This command can't be allowed for good: {exc}")
        requeue = not ToolCall.objects.filter(run=run, status=ToolCallStatus.AWAITING).exists()
        if requeue:
            requeue = bool(
                Run.objects.filter(pk=run.pk, status=RunStatus.WAITING).update(
                    status=RunStatus.QUEUED
                )
            )
        call.refresh_from_db()
        data = events.tool_call_data(call)
        events.publish_on_commit(
            str(run.conversation.uuid), {"t": "tool.decided", "run": str(run.uuid), "call": data}
        )
        if requeue:
            transaction.on_commit(lambda: enqueue_run(str(run.uuid)))
    return call


def _already_decided(call: ToolCall) -> str:
    who = call.decided_by.name if call.decided_by else "someone"
    if call.status == ToolCallStatus.DENIED:
        return f"{who} already denied this command."
    if call.status == ToolCallStatus.CANCELLED:
        return "The run was stopped; this command will not run."
    return f"{who} already approved this command."


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def run_undo(*, run: Run, user: User) -> Run:
    """Ask the worker to revert the files this turn changed, keeping later changes that don't
    conflict. The git work happens there (jobs.undo); the bubble says "Undoing…" meanwhile and
    is refreshed (run.updated) when it is done, or says why it could not be."""
    from . import jobs

    if not run.is_finished:
        raise ChatError("Wait until the reply has finished (or stop it) to undo its changes.")
    if not run.changed_files:
        raise ChatError("This reply changed no files.")
    if run.undone_at:
        raise ChatError("This reply's changes were already undone.")
    if getattr(run.conversation, "workspace", None) is None:
        raise ChatError("This conversation no longer has a repository.")
    if run.conversation.runs.filter(status__in=IN_FLIGHT).exists():
        raise ChatError("Wait until the assistant has finished before undoing changes.")
    asked = Run.objects.filter(
        pk=run.pk, undone_at__isnull=True, undo_requested_by__isnull=True
    ).update(undo_requested_by=user, undo_error="")
    if not asked:
        run.refresh_from_db()
        if run.undone_at:
            raise ChatError("This reply's changes were already undone.")
        raise ChatError("These changes are being undone already.")
    jobs.enqueue("undo", str(run.uuid))
    run.refresh_from_db()
    return run


# --- Used by the agent (async code calls these through db_sync_to_async) ------------------------


def workspace_pending() -> Exists:
    """For a query of runs: whether the run's conversation is still having its repository
    attached (its workspace prepared). Such a run waits, queued: the attach job queues it
    again once done."""
    return Exists(
        RepoJob.objects.filter(
            conversation_id=OuterRef("conversation_id"),
            kind=RepoJobKind.ATTACH,
            status__in=JOB_PENDING,
        )
    )


def run_claim(run_id: str, *, unless_workspace_pending: bool = False) -> Run | None:
    """queued -> running, once: a task delivered twice finds nothing to claim. With
    ``unless_workspace_pending`` a run whose workspace is still being prepared is left queued,
    in the same statement (one round trip less than asking first, and no gap between the
    two). The run comes back with what the agent reads: its conversation, team, author, user
    message, and the conversation's workspace (with its repository and team) when it has one."""
    from config.readiness import executing_worker

    now = timezone.now()
    claimable = Run.objects.filter(uuid=run_id, status=RunStatus.QUEUED)
    if unless_workspace_pending:
        claimable = claimable.exclude(workspace_pending())
    claimed = claimable.update(
        status=RunStatus.RUNNING,
        started=Coalesce("started", Value(now)),
        heartbeat=now,
        worker=executing_worker(),
    )
    if not claimed:
        return None
    return Run.objects.select_related(
        "conversation__team",
        "conversation__workspace__repository__team",
        "requested_by",
        "user_message",
    ).get(uuid=run_id)


def run_finish(
    *, run: Run, status: str, text: str, error: str = "", model: str = "", tree_after: str = ""
) -> Message | None:
    """Save the reply (exactly the text that was streamed) and the final status."""
    _, message = _finish(
        run, status=status, text=text, error=error, model=model, tree_after=tree_after
    )
    return message


def run_park(*, run: Run, text: str, seq: int) -> bool:
    """running -> waiting (a command awaits approval), keeping the text so far. A Stop pressed
    while the run was parking is honoured here, since no worker will look at the flag."""
    parked = Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        status=RunStatus.WAITING, text=text, seq=seq
    )
    if parked and streams.is_cancel_requested_sync(str(run.uuid)):
        cancel_waiting(run)
        return False
    return bool(parked)


def _finish(
    run: Run,
    *,
    status: str,
    text: str,
    error: str,
    model: str = "",
    tree_after: str = "",
    from_status: str = RunStatus.RUNNING,
    **only_if,
):
    """running (or from_status) -> a final status, once; returns (whether this call finished
    it, message)."""
    assert status in FINISHED_STATUSES
    with transaction.atomic():
        finished, model = timezone.now(), model or run.model
        updated = Run.objects.filter(pk=run.pk, status=from_status, **only_if).update(
            status=status, error=error, finished=finished, model=model, text="",
            tree_after=tree_after,
        )  # fmt: skip
        if not updated:
            return False, None
        # The instance says what the row now says: the run-ended hook's receivers read it
        # without fetching it again.
        run.status, run.error, run.finished = status, error, finished
        run.model, run.text, run.tree_after = model, "", tree_after
        message = None
        if text:
            message = Message.objects.create(
                conversation_id=run.conversation_id, role=Role.ASSISTANT, content=text, run=run
            )
        Conversation.objects.filter(pk=run.conversation_id).update(updated=timezone.now())
    return True, message


def usage_record(*, run: Run, model: str, usage, outcome: str) -> None:
    """One model call: priced, rolled up and settled against the budgets (usage/metering.py)."""
    hooks.meter().record_llm(run=run, model=model, usage=usage, outcome=outcome)


def usage_record_tool(*, run: Run, call: ToolCall, duration_ms: int, outcome: str = "ok") -> None:
    """One tool execution in the sandbox (counted, with its time; it costs no tokens)."""
    hooks.meter().record_tool(run=run, name=call.name, duration_ms=duration_ms, outcome=outcome)


# Not thread-sensitive: each is one self-contained unit of work, and hundreds of runs on one
# loop must not queue behind a single thread (nor behind the server's views in embedded mode).
def run_heartbeat(run: Run) -> None:
    Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(heartbeat=timezone.now())


arun_claim = db_sync_to_async(run_claim)
arun_heartbeat = db_sync_to_async(run_heartbeat)
arun_park = db_sync_to_async(run_park)
ausage_record_tool = db_sync_to_async(usage_record_tool)


def fail_interrupted_runs() -> int:
    """Embedded mode: runs execute inside the server, so at start-up any run still queued or
    running was cut off by the last shutdown."""
    return Run.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).update(
        status=RunStatus.FAILED,
        error="Interrupted: the server restarted before the reply finished.",
        finished=timezone.now(),
    )


STALE_AFTER = timedelta(seconds=90)
INTERRUPTED = "Interrupted: the worker running this reply stopped. Press Retry to try again."


def fail_stale_runs(*, older_than: timedelta = STALE_AFTER) -> int:
    """Fail running runs whose executor stopped sending heartbeats (a worker that died or was
    killed). What had streamed is kept as the partial reply. Safe to run from many workers at
    once: each run is finished by one conditional update."""
    cutoff = timezone.now() - older_than
    stale = Run.objects.filter(status=RunStatus.RUNNING, heartbeat__lt=cutoff).select_related(
        "conversation"
    )
    return sum(_fail_cut_off(run, heartbeat__lt=cutoff) for run in stale)


def fail_orphaned_runs() -> int:
    """Fail at once the running runs of a Celery worker that is gone: its alive key in Redis
    expired (config/readiness.py), so nothing will finish them. Runs every few seconds on every
    worker; the stale-heartbeat sweep above stays as the net for runs that name no worker."""
    from config.readiness import dead_workers

    names = set(
        Run.objects.filter(status=RunStatus.RUNNING)
        .exclude(worker="")
        .values_list("worker", flat=True)
        .distinct()
    )
    dead = dead_workers(names)
    if not dead:
        return 0
    orphans = Run.objects.filter(status=RunStatus.RUNNING, worker__in=dead).select_related(
        "conversation"
    )
    return sum(_fail_cut_off(run, worker=run.worker) for run in orphans)


def requeue_lost_runs() -> int:
    """Queue again the queued runs older than Redis: their tasks were in a Redis that restarted
    and kept nothing (the broker's queue with them), so no worker would ever claim them. Each
    once per Redis lifetime; a duplicate (a Redis that did keep its queue) is harmless, a run is
    claimed once."""
    from config.readiness import mark_once, redis_started

    from .runner import enqueue_run

    started = datetime.fromtimestamp(redis_started(), tz=UTC)
    count = 0
    for run_id in Run.objects.filter(status=RunStatus.QUEUED, created__lt=started).values_list(
        "uuid", flat=True
    ):
        if mark_once(f"tandem:run:{run_id}:requeued", 24 * 3600):
            log.warning("Run %s was queued in a Redis that restarted: queued again", run_id)
            enqueue_run(str(run_id))
            count += 1
    return count


def _fail_cut_off(run: Run, **only_if) -> bool:
    """Finish a run whose executor is gone as failed, with the text its viewers saw (the
    stream's snapshot) as the partial reply, and tell them; Retry starts it again."""
    text = streams.snapshot_sync(str(run.uuid)).text
    finished, message = _finish(
        run, status=RunStatus.FAILED, text=text, error=INTERRUPTED, **only_if
    )
    if not finished:
        return False  # it finished, or another sweeper got there first
    run.refresh_from_db()
    hooks.send(hooks.run_ended, run=run)
    events.publish_sync(
        str(run.conversation.uuid),
        {
            "t": "run.failed",
            "run": str(run.uuid),
            "error": INTERRUPTED,
            "message": events.message_data(message) if message else None,
        },
    )
    return True


# --- Repository jobs: the git work a page asks for, done by a worker (jobs.repo_job) ------------


def _repo_job(**fields) -> RepoJob:
    from . import jobs

    job = RepoJob.objects.create(**fields)
    jobs.enqueue("repo_job", str(job.uuid))
    # Where jobs run at once (tests' inline jobs), what the caller shows is the outcome.
    job.refresh_from_db(fields=["status", "error", "result", "url", "number", "finished"])
    return job


def repository_fetch(*, repo: Repository, user: User) -> RepoJob:
    """Fetch the repository now; the row (and the repository's) say how it went."""
    pending = repo.jobs.filter(kind=RepoJobKind.FETCH, status__in=JOB_PENDING).first()
    return pending or _repo_job(kind=RepoJobKind.FETCH, repository=repo, requested_by=user)


def attach_pending(conversation: Conversation) -> RepoJob | None:
    return RepoJob.objects.filter(
        conversation_id=conversation.pk, kind=RepoJobKind.ATTACH, status__in=JOB_PENDING
    ).first()


@transaction.atomic
def workspace_attach(
    *, conversation: Conversation, repo: Repository, branch: str, user: User
) -> RepoJob:
    """Give the conversation its own clone of ``branch`` (blank: the default), made by a worker.
    Messages sent meanwhile wait for it."""
    from .models import Workspace

    if repo.team_id != conversation.team_id:
        raise ChatError("That repository belongs to another team.")
    Conversation.objects.select_for_update().filter(pk=conversation.pk).first()
    if Workspace.objects.filter(conversation_id=conversation.pk).exists():
        raise ChatError("This conversation already works on a repository.")
    if pending := attach_pending(conversation):
        if pending.repository_id == repo.pk and pending.branch == branch:
            return pending  # the same request twice (a double click)
        raise ChatError("This conversation's workspace is being prepared already.")
    return _repo_job(
        kind=RepoJobKind.ATTACH,
        repository=repo,
        conversation=conversation,
        branch=branch,
        requested_by=user,
    )


@transaction.atomic
def workspace_push(
    *, conversation: Conversation, branch: str, user: User, message: str | None = None
) -> RepoJob:
    """Commit the conversation's changes as ``user`` with ``message`` (checked, then used
    exactly; None: the proposed one) and push them to a new branch of the remote (never
    forced), in a worker."""
    from . import pushes

    workspace = getattr(conversation, "workspace", None)
    if workspace is None:
        raise ChatError("This conversation has no repository.")
    if message is None:
        message = pushes.commit_message_proposal(conversation)
    message = pushes.commit_message_checked(message)
    Conversation.objects.select_for_update().filter(pk=conversation.pk).first()
    if conversation.runs.filter(status__in=IN_FLIGHT).exists():
        raise ChatError("Wait until the assistant has finished before pushing.")
    if conversation.repo_jobs.filter(kind=RepoJobKind.PUSH, status__in=JOB_PENDING).exists():
        raise ChatError("A push of this conversation is under way already.")
    return _repo_job(
        kind=RepoJobKind.PUSH,
        repository=workspace.repository,
        conversation=conversation,
        branch=branch or workspace.work_branch,
        message=message,
        requested_by=user,
    )


def last_push(conversation: Conversation) -> RepoJob | None:
    """The conversation's latest push that worked: what a pull request is opened from."""
    done = conversation.repo_jobs.filter(kind=RepoJobKind.PUSH, status=RepoJobStatus.DONE)
    return done.defer("patch").order_by("-created").first()


@transaction.atomic
def pull_request_open(
    *, conversation: Conversation, user: User, title: str, body: str, base: str
) -> RepoJob:
    """Open a pull request (GitHub) or merge request (GitLab) from the branch the
    conversation's last push made, in a worker (assistant/forges.py). One already open for
    that branch is found and linked instead: a second click opens no second one. Who may push
    may do this."""
    from . import forges, pushes

    workspace = getattr(conversation, "workspace", None)
    if workspace is None:
        raise ChatError("This conversation has no repository.")
    repo = workspace.repository
    target = forges.target_of(repo)
    if target is None:
        raise ChatError(f"“{repo.name}” is not on GitHub or GitLab: it has no pull requests.")
    if not forges.has_token(repo):
        raise ChatError(
            f"Opening a {target.noun} needs the repository's HTTPS token, and “{repo.name}” "
            "has none."
        )
    Conversation.objects.select_for_update().filter(pk=conversation.pk).first()
    jobs = conversation.repo_jobs
    if jobs.filter(kind=RepoJobKind.PUSH, status__in=JOB_PENDING).exists():
        raise ChatError(f"Wait until the push has finished, then open the {target.noun}.")
    pushed = last_push(conversation)
    if pushed is None:
        raise ChatError(f"Push the changes to a branch first: the {target.noun} is made from it.")
    title, body, base = pushes.pull_request_checked(title=title, body=body, base=base)
    if pending := jobs.filter(kind=RepoJobKind.PULL_REQUEST, status__in=JOB_PENDING).first():
        return pending  # a double click
    return _repo_job(
        kind=RepoJobKind.PULL_REQUEST,
        repository=repo,
        conversation=conversation,
        branch=pushed.branch,
        base=base,
        title=title,
        message=body,
        requested_by=user,
    )


def workspace_patch(*, conversation: Conversation, user: User, again: bool = False) -> RepoJob:
    """The patch of the conversation's last finished turn (Workspace.tree): the job that has
    written or is writing it, else a new one. ``again``: a new one in place of a failed one."""
    workspace = getattr(conversation, "workspace", None)
    if workspace is None:
        raise ChatError("This conversation has no repository.")
    if conversation.runs.filter(status__in=IN_FLIGHT).exists():
        # The tree is still changing: a patch now would be half a turn.
        raise ChatError("Wait until the assistant has finished before downloading the patch.")
    if not workspace.tree:
        raise ChatError("This conversation has not changed any files yet.")
    made = conversation.repo_jobs.filter(kind=RepoJobKind.PATCH, tree=workspace.tree)
    if again:
        made = made.exclude(status=RepoJobStatus.FAILED)
    found = made.order_by("-created").defer("patch").first()
    return found or _repo_job(
        kind=RepoJobKind.PATCH,
        repository=workspace.repository,
        conversation=conversation,
        tree=workspace.tree,
        requested_by=user,
    )


def workspace_file(*, conversation: Conversation, path: str, user: User) -> RepoJob:
    """The job reading ``path`` from the conversation's last finished turn (its base commit
    before the first): the one that read it already, else a new one. The caller has checked
    the path (file_links.path_problem)."""
    workspace = getattr(conversation, "workspace", None)
    if workspace is None:
        raise ChatError("This conversation has no repository.")
    tree = workspace.tree or workspace.base_commit
    made = conversation.repo_jobs.filter(kind=RepoJobKind.FILE, tree=tree, path=path)
    # A refusal (missing, binary…) holds for this snapshot; a failure of git is tried again.
    found = made.exclude(status=RepoJobStatus.FAILED, result="").order_by("-created").first()
    if found is not None:
        return found
    job = _repo_job(
        kind=RepoJobKind.FILE,
        repository=workspace.repository,
        conversation=conversation,
        tree=tree,
        path=path,
        requested_by=user,
    )
    job.refresh_from_db(fields=["patch"])  # read already where jobs run at once
    return job


# Longer than any git operation of a job may take (NETWORK_TIMEOUT is 10 minutes): a job still
# running after this lost its worker (killed mid-job; acks_late redelivers only queued ones).
REPO_JOB_STALE = timedelta(minutes=30)


def fail_stale_repo_jobs(*, older_than: timedelta = REPO_JOB_STALE) -> int:
    """Fail repository jobs whose worker stopped mid-job, in words, so a conversation is not
    left "preparing" forever; runs that waited for a workspace go on (without it)."""
    from . import runner

    cutoff = timezone.now() - older_than
    count = 0
    for job in RepoJob.objects.filter(status=RepoJobStatus.RUNNING, created__lt=cutoff):
        failed = RepoJob.objects.filter(pk=job.pk, status=RepoJobStatus.RUNNING).update(
            status=RepoJobStatus.FAILED,
            error="It was interrupted: the worker doing it stopped. Try again.",
            finished=timezone.now(),
        )
        if not failed:
            continue  # it finished, or another sweeper got there first
        count += 1
        if job.kind == RepoJobKind.ATTACH and job.conversation_id is not None:
            waiting = Run.objects.filter(
                conversation_id=job.conversation_id, status=RunStatus.QUEUED
            )
            for run_id in waiting.values_list("uuid", flat=True):
                runner.enqueue_run(str(run_id))
    return count
