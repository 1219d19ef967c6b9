"""Usage dashboards (team admins; site staff), their CSV exports, a team's budget and prices,
and the budget banner members see in a conversation."""

from __future__ import annotations

import csv
import functools
from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.selectors import admin_membership_for, membership_for

from . import budgets, dashboard
from .forms import BudgetForm, PriceForm
from .models import ModelPrice


def staff_required(view):
    """Signed-in staff only; anyone else gets 404, as for a page that isn't there."""

    @login_required
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if not request.user.is_staff:
            raise Http404("No such page")
        return view(request, *args, **kwargs)

    return wrapped


@login_required
@require_GET
def team_dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    membership = admin_membership_for(request.user, slug)
    team = membership.team
    rng = dashboard.parse_range(request.GET)
    context = {
        "team": team,
        "membership": membership,
        "report": dashboard.team_report(team, rng),
        "budget": dashboard.team_budget(team),
        "budget_form": BudgetForm(
            initial={
                "monthly_budget_usd": team.monthly_budget_usd,
                "member_daily_tokens": team.member_daily_tokens,
            }
        ),
        "prices": list(team.model_prices.all()),
        "price_form": PriceForm(),
        "csv_url": f"/t/{team.slug}/usage/export.csv",
        "presets": dashboard.PRESETS,
        "warn_percent": settings.BUDGET_WARN_PERCENT,
    }
    with dashboard.reading():
        return render(request, "usage/dashboard.html", context)


@staff_required
@require_GET
def staff_dashboard(request: HttpRequest) -> HttpResponse:
    rng = dashboard.parse_range(request.GET)
    context = {
        "report": dashboard.site_report(rng),
        "staff": True,
        "csv_url": "/staff/usage/export.csv",
        "presets": dashboard.PRESETS,
    }
    with dashboard.reading():
        return render(request, "usage/dashboard.html", context)


# --- CSV -------------------------------------------------------------------------------------


def _cell(value) -> object:
    """Text a spreadsheet would run as a formula (=, +, -, @ first) is kept as text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _cost(value: Decimal) -> str:
    return f"{value:.6f}"


COUNTS = ["llm_calls", "errors", "prompt_tokens", "completion_tokens", "tokens", "cost_usd"]


def _counts(row: dashboard.Row) -> list:
    return [
        row.calls,
        row.errors,
        row.prompt_tokens,
        row.completion_tokens,
        row.tokens,
        _cost(row.cost_usd),
    ]


TOOLS = ["tool_calls", "sandbox_seconds"]


def _tools(row: dashboard.Row) -> list:
    return [row.tool_calls, f"{row.sandbox_seconds:.3f}"]


def _table(report: dashboard.Report, name: str) -> tuple[list[str], list[list]]:
    if name == "member":
        return ["member", "email", *COUNTS, *TOOLS], [
            [r.label, r.extra.get("email", ""), *_counts(r), *_tools(r)] for r in report.by_member
        ]
    if name == "model":
        return ["model", *COUNTS, "mean_latency_ms"], [
            [r.label, *_counts(r), round(r.mean_latency_ms or 0)] for r in report.by_model
        ]
    if name == "tool":
        return ["tool", *TOOLS], [[r.label, *_tools(r)] for r in report.by_tool]
    if name == "conversation":
        return ["conversation", "team", "llm_calls", "tokens", "cost_usd", "tool_calls"], [
            [
                r.label,
                r.extra["conversation"].team.slug if r.extra.get("conversation") else "",
                r.calls,
                r.tokens,
                _cost(r.cost_usd),
                r.tool_calls,
            ]
            for r in report.top_conversations
        ]
    if name == "team" and report.by_team:
        return ["team", "name", *COUNTS, *TOOLS, "monthly_budget_usd", "spent_this_month_usd"], [
            [
                r.extra["team"].slug if r.extra.get("team") else "",
                r.label,
                *_counts(r),
                *_tools(r),
                r.extra["budget"].budget_usd if r.extra.get("budget") else "",
                _cost(r.extra["budget"].spent_usd) if r.extra.get("budget") else "",
            ]
            for r in report.by_team
        ]
    return ["date", *COUNTS, *TOOLS], [
        [r.key.isoformat(), *_counts(r), *_tools(r)] for r in report.by_day
    ]


TABLES = ("day", "member", "model", "tool", "conversation", "team")


def _csv(report: dashboard.Report, table: str, prefix: str) -> HttpResponse:
    table = table if table in TABLES else "day"
    header, rows = _table(report, table)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    name = f"{prefix}-usage-{table}-{report.range.start}-{report.range.end}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    writer = csv.writer(response)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return response


@login_required
@require_GET
def team_csv(request: HttpRequest, slug: str) -> HttpResponse:
    team = admin_membership_for(request.user, slug).team
    report = dashboard.team_report(team, dashboard.parse_range(request.GET))
    with dashboard.reading():
        return _csv(report, request.GET.get("table", "day"), team.slug)


@staff_required
@require_GET
def staff_csv(request: HttpRequest) -> HttpResponse:
    report = dashboard.site_report(dashboard.parse_range(request.GET))
    with dashboard.reading():
        return _csv(report, request.GET.get("table", "day"), "site")


# --- Budget and prices (team admins) -------------------------------------------------------


@login_required
@require_POST
def team_budget_save(request: HttpRequest, slug: str) -> HttpResponse:
    team = admin_membership_for(request.user, slug).team
    form = BudgetForm(request.POST)
    if not form.is_valid():
        errors = " ".join(" ".join(map(str, e)) for e in form.errors.values())
        messages.error(request, f"The limits were not saved. {errors}")
        return redirect("usage_dashboard", slug=slug)
    team.monthly_budget_usd = form.cleaned_data["monthly_budget_usd"]
    team.member_daily_tokens = form.cleaned_data["member_daily_tokens"]
    team.save(update_fields=["monthly_budget_usd", "member_daily_tokens"])
    budget = team.monthly_budget_usd
    cap = team.member_daily_tokens
    messages.success(
        request,
        "Saved: "
        + (f"a budget of ${budget:,.2f} a month" if budget is not None else "no monthly budget")
        + ", "
        + (f"{cap:,} tokens per member a day." if cap is not None else "no daily token limit."),
    )
    return redirect("usage_dashboard", slug=slug)


@login_required
@require_POST
def team_prices_save(request: HttpRequest, slug: str) -> HttpResponse:
    team = admin_membership_for(request.user, slug).team
    if "delete" in request.POST:
        model = request.POST["delete"]
        deleted, _ = ModelPrice.objects.filter(team=team, model=model).delete()
        if deleted:
            messages.success(request, f"Removed the price of {model}.")
        return redirect("usage_dashboard", slug=slug)
    form = PriceForm(request.POST)
    if not form.is_valid():
        errors = " ".join(" ".join(map(str, e)) for e in form.errors.values())
        messages.error(request, f"The price was not saved. {errors}")
        return redirect("usage_dashboard", slug=slug)
    data = form.cleaned_data
    ModelPrice.objects.update_or_create(
        team=team,
        model=data["model"],
        defaults={
            "input_usd_per_mtok": data["input_usd_per_mtok"],
            "output_usd_per_mtok": data["output_usd_per_mtok"],
        },
    )
    messages.success(
        request,
        f"{data['model']} now costs ${data['input_usd_per_mtok']} (input) and "
        f"${data['output_usd_per_mtok']} (output) per 1M tokens, from the next call on.",
    )
    return redirect("usage_dashboard", slug=slug)


# --- The members' banner -----------------------------------------------------------------------


@login_required
@require_GET
def banner(request: HttpRequest, slug: str) -> HttpResponse:
    """The conversation page's budget banner, fetched again after each message sent."""
    membership = membership_for(request.user, slug)
    context = {
        "team": membership.team,
        "budget": budgets.status(membership.team.pk, request.user.pk),
        "oob": True,
    }
    return render(request, "usage/_budget_banner.html", context)
