"""The OpenAPI 3.1 description of /api/v1/, written by hand next to the views it describes.

tests/test_api_schema.py fuzzes the live views against it (schemathesis), so a response that
strays from what is written here fails the suite.
"""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings

UUID = {"type": "string", "format": "uuid"}
TIME = {"type": "string", "format": "date-time"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
    properties: dict[str, Any], *, required: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        **extra,
    }


RUN_STATUSES = ["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
TOOL_STATUSES = [
    "pending",
    "awaiting",
    "approved",
    "running",
    "succeeded",
    "failed",
    "denied",
    "cancelled",
]

SCHEMAS: dict[str, Any] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "code": {
                        "type": "string",
                        "description": "Stable, for programs: e.g. not_found, invalid_json, "
                        "rate_limited.",
                    },
                    "message": {"type": "string", "description": "For people."},
                }
            )
        }
    ),
    "User": obj({"id": UUID, "email": {"type": "string"}, "name": {"type": "string"}}),
    "Team": obj(
        {
            "id": UUID,
            "slug": {"type": "string"},
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["owner", "admin", "member"]},
        }
    ),
    "Key": obj(
        {
            "id": UUID,
            "name": {"type": "string"},
            "prefix": {"type": "string", "description": "The 8 characters after tdm_."},
            "scope": {"type": "string", "enum": ["read", "write"]},
            "expires": nullable(TIME),
        }
    ),
    "Me": obj(
        {
            "user": ref("User"),
            "team": nullable(ref("Team")) | {"description": "The key's team; null by session."},
            "teams": {
                "type": "array",
                "items": ref("Team"),
                "description": "By session: every team of the person. By key: its team.",
            },
            "key": nullable(ref("Key")) | {"description": "The key used; null by session."},
        }
    ),
    "RepositoryRef": obj(
        {
            "id": UUID,
            "name": {"type": "string"},
            "branch": {"type": "string"},
            "work_branch": {"type": "string"},
        }
    ),
    "Conversation": obj(
        {
            "id": UUID,
            "team": {"type": "string", "description": "The team's slug."},
            "title": {"type": "string"},
            "created": TIME,
            "updated": TIME,
            "created_by": nullable({"type": "string"}),
            "repository": nullable(ref("RepositoryRef")),
        }
    ),
    "ConversationPage": obj(
        {
            "data": {"type": "array", "items": ref("Conversation")},
            "next": nullable({"type": "string"})
            | {"description": "Pass as ?cursor= for the next page; null on the last page."},
        }
    ),
    "Message": obj(
        {
            "id": UUID,
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "author": nullable({"type": "string"})
            | {"description": "The author's name; null for the assistant."},
            "content": {"type": "string"},
            "created": TIME,
        }
    ),
    "Run": obj(
        {
            "id": UUID,
            "conversation": UUID,
            "status": {"type": "string", "enum": RUN_STATUSES},
            "error": {"type": "string", "description": "Why it failed, in words; else empty."},
            "model": {"type": "string"},
            "user_message": UUID,
            "message": nullable(UUID) | {"description": "The reply, once the run has one."},
            "created": TIME,
            "started": nullable(TIME),
            "finished": nullable(TIME),
        }
    ),
    "ToolCall": obj(
        {
            "id": UUID,
            "run": UUID,
            "name": {"type": "string"},
            "arguments": {"type": "string", "description": "JSON text, as the model sent it."},
            "status": {"type": "string", "enum": TOOL_STATUSES},
            "output": {"type": "string"},
            "exit_code": nullable({"type": "integer"}),
            "duration_ms": nullable({"type": "integer"}),
            "truncated": {"type": "boolean"},
            "approval": {"type": "string", "enum": ["", "allowlisted", "asked"]},
            "decided_by": nullable({"type": "string"}),
            "decided_at": nullable(TIME),
            "created": TIME,
        }
    ),
    "RunDetail": {
        "allOf": [
            ref("Run"),
            obj(
                {
                    "usage": obj(
                        {
                            "prompt_tokens": {"type": "integer", "minimum": 0},
                            "completion_tokens": {"type": "integer", "minimum": 0},
                        },
                        description="Summed over the run's model calls.",
                    ),
                    "tool_calls": {"type": "array", "items": ref("ToolCall")},
                    "seq": nullable({"type": "integer"})
                    | {"description": "In flight: the number of its last delta. Else null."},
                    "text": nullable({"type": "string"})
                    | {"description": "In flight: the reply so far. Else null."},
                }
            ),
        ]
    },
    "ConversationDetail": {
        "allOf": [
            ref("Conversation"),
            obj(
                {
                    "messages": {"type": "array", "items": ref("Message")},
                    "runs": {"type": "array", "items": ref("Run")},
                }
            ),
        ]
    },
    "NewConversation": obj(
        {
            "title": {"type": "string", "maxLength": 200},
            "repository": {
                "type": "string",
                "maxLength": 100,
                "description": "A repository of the team, by id or name: the conversation "
                "gets its own workspace of it.",
            },
            "branch": {
                "type": "string",
                "maxLength": 255,
                "description": "With repository: the branch to start from (default: the "
                "repository's default branch).",
            },
        },
        required=[],
        additionalProperties=False,
    ),
    "NewMessage": obj(
        {"content": {"type": "string", "minLength": 1}},
        additionalProperties=False,
    ),
    "Sent": obj({"message": ref("Message"), "run": ref("Run")}),
    "Decision": obj(
        {
            "decision": {
                "type": "string",
                "enum": ["approve", "deny", "always"],
                "description": "always: approve, and allow the command for good in the team "
                "(admins only: 403 for others).",
            }
        },
        additionalProperties=False,
    ),
}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


RESPONSES = {
    "BadRequest": _error("Malformed: not JSON, an unknown or mistyped field, a bad parameter."),
    "Unauthorized": _error(
        "No credentials, or an API key that is unknown, revoked or expired.",
        {"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    "Forbidden": _error(
        "A read-only key tried to write (insufficient_scope), or a session write without the "
        "CSRF token (csrf_failed)."
    ),
    "NotFound": _error(
        "No such object in a team the caller is in (the same for one of another team)."
    ),
    "Conflict": _error(
        "Not possible in the object's present state (for messages: run_in_flight, a reply of a "
        "conversation with a repository is still queued, running or awaiting approval)."
    ),
    "TooLarge": _error("The request body is over the size limit."),
    "Unprocessable": _error("Well-formed but not acceptable (e.g. an empty or too long message)."),
    "TooManyRequests": _error(
        "Over the rate limit (rate_limited: retry after Retry-After seconds), or, for messages, "
        "the team's budget is used up (budget_exceeded).",
        {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    ),
}


def _responses(ok: dict[str, Any], *errors: str) -> dict[str, Any]:
    """``ok`` (status -> response) and the errors named, with the 401 and 429 every
    authenticated operation can answer."""
    assert all(code.isdigit() for code in ok), ok
    codes = {
        "BadRequest": "400",
        "Unauthorized": "401",
        "Forbidden": "403",
        "NotFound": "404",
        "Conflict": "409",
        "TooLarge": "413",
        "Unprocessable": "422",
        "TooManyRequests": "429",
    }
    result = dict(ok)
    for name in ("Unauthorized", "TooManyRequests", *errors):
        result[codes[name]] = {"$ref": f"#/components/responses/{name}"}
    return result


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(name: str, *, example: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """A JSON request body; the example is what the docs page prefills, so it must be a body
    the endpoint accepts as it is (no repository named "Hello")."""
    return {
        "required": required,
        "content": {"application/json": {"schema": ref(name), "example": example}},
    }


TEAM = {
    "name": "team",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": "^[-a-zA-Z0-9_]{0,50}$"},
    "description": "The team's slug (empty: not given). Needed by session for listing and creating "
    "conversations; with a key, optional (must be the key's team). Elsewhere it narrows "
    "the lookup to that team.",
}


def _path_id(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": UUID, "description": what}


WRITE = "Needs a write key (or a session with the CSRF token)."


def _paths() -> dict[str, Any]:
    conversation_id = _path_id("conversation_id", "The conversation's id.")
    run_id = _path_id("run_id", "The run's id.")
    call_id = _path_id("call_id", "The tool call's id.")
    return {
        "/me": {
            "get": {
                "operationId": "me",
                "summary": "Who is calling, and in which teams",
                "responses": _responses({"200": _json("The caller.", ref("Me"))}),
            }
        },
        "/conversations": {
            "get": {
                "operationId": "listConversations",
                "summary": "The team's conversations, most recently active first",
                "parameters": [
                    TEAM,
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "The `next` of the previous page.",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        "description": "Page size (default 50).",
                    },
                    {
                        "name": "q",
                        "in": "query",
                        "schema": {"type": "string", "maxLength": 200},
                        "description": "Only titles containing this.",
                    },
                ],
                "responses": _responses(
                    {"200": _json("A page of conversations.", ref("ConversationPage"))},
                    "BadRequest",
                    "NotFound",
                ),
            },
            "post": {
                "operationId": "createConversation",
                "summary": "Start a conversation, optionally on a repository",
                "description": WRITE,
                "parameters": [TEAM],
                "requestBody": _body(
                    "NewConversation", example={"title": "Fix the flaky test"}, required=False
                ),
                "responses": _responses(
                    {"201": _json("The new conversation.", ref("Conversation"))},
                    "BadRequest",
                    "Forbidden",
                    "NotFound",
                    "TooLarge",
                    "Unprocessable",
                ),
            },
        },
        "/conversations/{conversation_id}": {
            "parameters": [conversation_id, TEAM],
            "get": {
                "operationId": "getConversation",
                "summary": "A conversation with all its messages and runs",
                "responses": _responses(
                    {"200": _json("The conversation.", ref("ConversationDetail"))}, "NotFound"
                ),
            },
            "delete": {
                "operationId": "deleteConversation",
                "summary": "Delete a conversation (runs in flight are stopped)",
                "description": WRITE,
                "responses": _responses(
                    {"204": {"description": "Deleted."}}, "Forbidden", "NotFound"
                ),
            },
        },
        "/conversations/{conversation_id}/export": {
            "parameters": [conversation_id, TEAM],
            "get": {
                "operationId": "exportConversation",
                "summary": "The conversation as a Markdown or JSON document (secrets redacted)",
                "parameters": [
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["markdown", "json"]},
                        "description": "markdown (default) or json.",
                    }
                ],
                "responses": _responses(
                    {
                        "200": {
                            "description": "The document.",
                            "content": {
                                "text/markdown": {"schema": {"type": "string"}},
                                "application/json": {"schema": {"type": "object"}},
                            },
                        }
                    },
                    "BadRequest",
                    "NotFound",
                ),
            },
        },
        "/conversations/{conversation_id}/messages": {
            "parameters": [conversation_id, TEAM],
            "post": {
                "operationId": "sendMessage",
                "summary": "Post a message; the assistant's run starts",
                "description": WRITE + " Follow the run with the event stream or GET /runs/{id}.",
                "requestBody": _body(
                    "NewMessage", example={"content": "What does this project do?"}
                ),
                "responses": _responses(
                    {"202": _json("The message and its queued run.", ref("Sent"))},
                    "BadRequest",
                    "Forbidden",
                    "NotFound",
                    "Conflict",
                    "TooLarge",
                    "Unprocessable",
                ),
            },
        },
        "/conversations/{conversation_id}/events": {
            "parameters": [conversation_id, TEAM],
            "get": {
                "operationId": "conversationEvents",
                "summary": "The conversation's events as Server-Sent Events",
                "description": (
                    "A `text/event-stream` that stays open. Each event has an `event:` name, "
                    "an `id:` and a JSON `data:` line. Reconnect with the last id in "
                    "`Last-Event-ID` (or `?last_event_id=`) to get exactly the events missed.\n\n"
                    "Events: `snapshot` (first, when not resuming: `{runs: [{id, status, seq, "
                    "text}]}`, the runs in flight and their text so far), `message.created`, "
                    "`run.queued`, `run.started`, `delta` (`{run, seq, text}`: append `text` to "
                    "the run's reply; `seq` counts up from the snapshot's), `tool.started`, "
                    "`tool.finished`, `tool.awaiting`, `tool.decided` (`{run, call}`), "
                    "`run.waiting`, `run.completed`, `run.failed`, `run.cancelled` (`{run, "
                    "message, error}`: the saved reply), `run.updated`, `conversation.renamed`, "
                    "`conversation.deleted` (then the stream ends), and `reset` (the events "
                    "after your Last-Event-ID are no longer kept: reload the conversation; a "
                    "fresh `snapshot` follows). Lines starting with `:` are heartbeats."
                ),
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "string", "pattern": r"^\d+-\d+$"},
                        "description": "Resume after this event.",
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "schema": {"type": "string", "pattern": r"^\d+-\d+$"},
                        "description": "The same, for clients that can't set headers.",
                    },
                ],
                "responses": _responses(
                    {
                        "200": {
                            "description": "The event stream.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        }
                    },
                    "BadRequest",
                    "NotFound",
                ),
            },
        },
        "/runs/{run_id}": {
            "parameters": [run_id, TEAM],
            "get": {
                "operationId": "getRun",
                "summary": "A run: status, error, model, token usage, tool calls",
                "responses": _responses({"200": _json("The run.", ref("RunDetail"))}, "NotFound"),
            },
        },
        "/runs/{run_id}/cancel": {
            "parameters": [run_id, TEAM],
            "post": {
                "operationId": "cancelRun",
                "summary": "Stop a run (what it wrote so far is kept)",
                "description": WRITE + " A running run stops within a second; a queued or "
                "waiting one at once.",
                "responses": _responses(
                    {"202": _json("The run as it is now.", ref("Run"))},
                    "BadRequest",
                    "Forbidden",
                    "NotFound",
                    "Conflict",
                    "TooLarge",
                ),
            },
        },
        "/tool-calls/{call_id}/decision": {
            "parameters": [call_id, TEAM],
            "post": {
                "operationId": "decideToolCall",
                "summary": "Approve or deny a command awaiting approval",
                "description": WRITE + " 409 when it was already decided or its run stopped.",
                "requestBody": _body("Decision", example={"decision": "approve"}),
                "responses": _responses(
                    {"200": _json("The tool call as it is now.", ref("ToolCall"))},
                    "BadRequest",
                    "Forbidden",
                    "NotFound",
                    "Conflict",
                    "TooLarge",
                ),
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "security": [],
                "responses": {"200": _json("OpenAPI 3.1.", {"type": "object"})},
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "Interactive documentation (HTML)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "A page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


# --- Added for the command-line client (issue 18): api/extra_views.py -------------------------

SCHEMAS |= {
    "Approval": {
        "allOf": [
            ref("ToolCall"),
            obj(
                {
                    "conversation": UUID,
                    "conversation_title": {"type": "string"},
                    "team": {"type": "string", "description": "The team's slug."},
                }
            ),
        ]
    },
    "ApprovalList": obj({"data": {"type": "array", "items": ref("Approval")}}),
    "NewShare": obj(
        {
            "audience": {
                "type": "string",
                "enum": ["team", "public"],
                "description": "team (default): members, signed in; public: anyone with the "
                "link, where the team's admins allow it (else 422).",
            },
            "mode": {
                "type": "string",
                "enum": ["snapshot", "live"],
                "description": "snapshot (default): as it is now; live: new messages too.",
            },
            "expiry": {
                "type": "string",
                "enum": ["1h", "1d", "7d", "30d", "never"],
                "description": "Default 7d.",
            },
        },
        required=[],
        additionalProperties=False,
    ),
    "Share": obj(
        {
            "id": UUID,
            "url": {"type": "string", "description": "The link; shown once, never again."},
            "audience": {"type": "string", "enum": ["team", "public"]},
            "mode": {"type": "string", "enum": ["snapshot", "live"]},
            "expires": nullable(TIME),
            "created": TIME,
        }
    ),
    "Usage": obj(
        {
            "team": {"type": "string", "description": "The team's slug."},
            "month": {"type": "string", "description": "YYYY-MM (UTC)."},
            "budget_usd": nullable({"type": "number"}) | {"description": "Null: no budget."},
            "spent_usd": {"type": "number", "description": "Spent this month, in US dollars."},
            "budget_percent": nullable({"type": "number"}),
            "daily_tokens": nullable({"type": "integer"})
            | {"description": "Each member's tokens a day; null: no limit."},
            "tokens_today": {"type": "integer", "description": "The caller's, today (UTC)."},
            "refusal": {
                "type": "string",
                "description": "Why new messages are refused now, in words; else empty.",
            },
        }
    ),
}

SCHEMAS["TurnDiff"] = obj(
    {
        "run": UUID,
        "pending": {"type": "boolean", "description": "Not computed yet: ask again soon."},
        "undone": {"type": "boolean"},
        "added": {"type": "integer", "minimum": 0},
        "deleted": {"type": "integer", "minimum": 0},
        "files": {
            "type": "array",
            "items": obj(
                {
                    "path": {"type": "string"},
                    "old_path": nullable({"type": "string"}),
                    "status": nullable({"type": "string"}),
                    "added": nullable({"type": "integer"}),
                    "deleted": nullable({"type": "integer"}),
                }
            ),
        },
        "files_total": {"type": "integer", "minimum": 0},
        "text": {"type": "string", "description": "The unified diff, bounded."},
        "clipped": {"type": "boolean", "description": "Some file's diff is missing or cut."},
        "error": {"type": "string", "description": "Why it could not be read; else empty."},
    }
)
SCHEMAS["TurnDiffList"] = obj({"data": {"type": "array", "items": ref("TurnDiff")}})

SCHEMAS |= {
    "NewPush": obj(
        {
            "branch": {
                "type": "string",
                "maxLength": 255,
                "description": "The new branch on the remote (default: the workspace's work "
                "branch). Never forced: a branch someone else moved is refused.",
            },
            "message": {
                "type": "string",
                "maxLength": 20000,
                "description": "The commit message, committed as written (line ends made \\n, "
                "trailing blank space dropped). Its first line says what the change does, at "
                "most 200 characters; no NUL. Default: the one the page proposes (the "
                "conversation's title, the files it changed).",
            },
        },
        required=[],
        additionalProperties=False,
    ),
    "NewPullRequest": obj(
        {
            "title": {
                "type": "string",
                "maxLength": 255,
                "description": "Default: the first line of the pushed commit's message.",
            },
            "body": {
                "type": "string",
                "maxLength": 60000,
                "description": "The description. Default: the rest of that message.",
            },
            "base": {
                "type": "string",
                "maxLength": 255,
                "description": "The branch it goes into. Default: the repository's default branch.",
            },
        },
        required=[],
        additionalProperties=False,
    ),
    "RepositoryJob": obj(
        {
            "id": UUID,
            "kind": {"type": "string", "enum": ["push", "pr"]},
            "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
            "error": {"type": "string", "description": "Why it failed, in words; else empty."},
            "branch": {
                "type": "string",
                "description": "push: the branch pushed to; pr: its head.",
            },
            "commit": nullable({"type": "string"})
            | {"description": "push, once done: the commit pushed."},
            "base": nullable({"type": "string"}) | {"description": "pr: the branch it goes into."},
            "pull_request": nullable(
                obj(
                    {
                        "number": {"type": "integer"},
                        "url": {"type": "string"},
                        "existing": {
                            "type": "boolean",
                            "description": "It was open already for the branch: linked, "
                            "not opened again.",
                        },
                    }
                )
            )
            | {"description": "pr, once done: GitHub's pull request or GitLab's merge request."},
            "created": TIME,
            "finished": nullable(TIME),
        }
    ),
}

MORE_TEXT = {"text/x-diff": {"schema": {"type": "string"}}}


def _more_paths() -> dict[str, Any]:
    conversation_id = _path_id("conversation_id", "The conversation's id.")
    run_id = _path_id("run_id", "The run's id.")
    return {
        "/approvals": {
            "get": {
                "operationId": "listApprovals",
                "summary": "Commands waiting for a member's approval, oldest first (up to 100)",
                "parameters": [TEAM],
                "responses": _responses(
                    {"200": _json("Tool calls awaiting approval.", ref("ApprovalList"))},
                    "NotFound",
                ),
            }
        },
        "/conversations/{conversation_id}/shares": {
            "parameters": [conversation_id, TEAM],
            "post": {
                "operationId": "createShare",
                "summary": "Make a share link (team or public, snapshot or live, expiring)",
                "description": WRITE + " The link's token is in `url`, shown only here.",
                "requestBody": _body(
                    "NewShare",
                    example={"audience": "team", "mode": "snapshot", "expiry": "7d"},
                    required=False,
                ),
                "responses": _responses(
                    {"201": _json("The new link.", ref("Share"))},
                    "BadRequest",
                    "Forbidden",
                    "NotFound",
                    "TooLarge",
                    "Unprocessable",
                ),
            },
        },
        "/conversations/{conversation_id}/diff": {
            "parameters": [conversation_id, TEAM],
            "get": {
                "operationId": "conversationDiff",
                "summary": "Each finished turn's changes (the diffs the page shows)",
                "description": "409 when the conversation has no repository.",
                "responses": _responses(
                    {"200": _json("The turns that changed files.", ref("TurnDiffList"))},
                    "NotFound",
                    "Conflict",
                ),
            },
        },
        "/conversations/{conversation_id}/patch": {
            "parameters": [conversation_id, TEAM],
            "get": {
                "operationId": "conversationPatch",
                "summary": "Everything the conversation changed, for `git apply` on its base",
                "description": "Streamed; cut at PATCH_MAX_BYTES with a last line saying so. "
                "409 when it has no repository or changed nothing yet.",
                "responses": _responses(
                    {"200": {"description": "The patch.", "content": MORE_TEXT}},
                    "NotFound",
                    "Conflict",
                ),
            },
        },
        "/runs/{run_id}/undo": {
            "parameters": [run_id, TEAM],
            "post": {
                "operationId": "undoRun",
                "summary": "Revert the files one turn changed (later turns' changes are kept)",
                "description": WRITE + " The worker does it; the event stream says "
                "`run.updated` when done. 409 while the assistant works, for a turn that "
                "changed nothing or was undone (or is being undone) already.",
                "responses": _responses(
                    {"202": _json("The run; its undo is under way.", ref("Run"))},
                    "BadRequest",
                    "Forbidden",
                    "NotFound",
                    "Conflict",
                    "TooLarge",
                ),
            },
        },
        "/conversations/{conversation_id}/push": {
            "parameters": [conversation_id, TEAM],
            "post": {
                "operationId": "pushConversation",
                "summary": "Commit the conversation's changes as the caller and push a branch",
                "description": WRITE + " A worker does it: follow the job with GET /jobs/{id}. "
                "409 when it has no repository, while the assistant works or a push is under "
                "way; 422 for a commit message that can't be used.",
                "requestBody": _body(
                    "NewPush",
                    example={"message": "Make the answer 42\n\nChanged files:\n- app.py\n"},
                    required=False,
                ),
                "responses": _responses(
                    {"202": _json("The push job, queued.", ref("RepositoryJob"))},
                    "BadRequest",
                    "Forbidden",
                    "NotFound",
                    "Conflict",
                    "TooLarge",
                    "Unprocessable",
                ),
            },
        },
        "/conversations/{conversation_id}/pull-request": {
            "parameters": [conversation_id, TEAM],
            "post": {
                "operationId": "openPullRequest",
                "summary": "Open a pull request (GitHub) or merge request (GitLab) from the "
                "branch of the last push",
                "description": WRITE + " With the repository's HTTPS token, by a worker: follow "
                "the job with GET /jobs/{id}. One already open for that branch is linked, not "
                "opened again. 409 when the repository is not on GitHub or GitLab, has no "
                "token, or nothing was pushed yet; 422 for a title or base that can't be used.",
                "requestBody": _body("NewPullRequest", example={}, required=False),
                "responses": _responses(
                    {"202": _json("The pull request job, queued.", ref("RepositoryJob"))},
                    "BadRequest",
                    "Forbidden",
                    "NotFound",
                    "Conflict",
                    "TooLarge",
                    "Unprocessable",
                ),
            },
        },
        "/jobs/{job_id}": {
            "parameters": [_path_id("job_id", "The job's id."), TEAM],
            "get": {
                "operationId": "getJob",
                "summary": "A push or pull request job and its outcome",
                "responses": _responses(
                    {"200": _json("The job.", ref("RepositoryJob"))}, "NotFound"
                ),
            },
        },
        "/usage": {
            "get": {
                "operationId": "usage",
                "summary": "The team's spending this month and the caller's tokens today",
                "parameters": [TEAM],
                "responses": _responses(
                    {"200": _json("Where the team stands.", ref("Usage"))},
                    "BadRequest",
                    "NotFound",
                ),
            }
        },
    }


def schema() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tandem API",
            "version": "1",
            "description": (
                "Conversations with the team's assistant, by program.\n\n"
                "**Auth**: an API key (`Authorization: Bearer tdm_…`, made under a team's "
                "API keys page or with `manage.py createapikey`) acts as its owner in its "
                "team; read keys can't write. Or the browser session: writes need the "
                "`X-CSRFToken` header, and listing or creating conversations needs "
                "`?team=SLUG`.\n\n"
                '**Errors** are `{"error": {"code", "message"}}`. Objects of teams the '
                "caller isn't in are 404, as are unknown ones.\n\n"
                f"**Limits**: {settings.API_RATE_PER_MINUTE} requests a minute per person "
                f"and {settings.API_KEY_RATE_PER_MINUTE} per key (0: none); 429 with "
                "Retry-After beyond. Request bodies up to "
                f"{settings.API_MAX_BODY_BYTES:,} bytes (413 beyond)."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}, {"session": []}],
        "paths": {**_paths(), **_more_paths()},
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME},
            },
            # Copies: a caller may change what it gets (tests do).
            "schemas": copy.deepcopy(SCHEMAS),
            "responses": copy.deepcopy(RESPONSES),
        },
    }
