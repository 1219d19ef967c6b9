"""In the browser, on the production topology (Daphne, a Celery worker, the fake provider):
an admin picks ranges on the usage dashboard and the chart shows what the table below it says;
a member sees the budget banner at 80% and, at 100%, the composer refuses in words."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import Page, expect

from assistant.models import Message, Run
from tests.helpers import session_cookie
from tests.usage_helpers import clear_budget_totals, seed

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def clean_totals():
    clear_budget_totals()
    yield
    clear_budget_totals()


def signed_in_page(new_context, stack, user) -> Page:
    context = new_context(user.email.split("@")[0], base_url=stack.base_url)
    context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": session_cookie(user),
                "url": stack.base_url,
            }
        ]  # noqa: E501
    )
    return context.new_page()


def chart_and_table(page: Page) -> tuple[dict, dict]:
    chart = page.evaluate(
        """() => {
          const chart = Chart.getChart(document.getElementById("usage-chart"));
          return {labels: chart.data.labels, tokens: chart.data.datasets[0].data,
                  cost: chart.data.datasets[1].data};
        }"""
    )
    rows = page.locator("[data-testid=by-day] tbody tr")
    table = {"labels": [], "tokens": [], "cost": []}
    for i in range(rows.count()):
        row = rows.nth(i)
        table["labels"].append(row.get_attribute("data-day"))
        table["tokens"].append(int(row.locator("[data-col=tokens]").inner_text().replace(",", "")))
        table["cost"].append(float(row.locator("[data-col=cost]").inner_text()))
    return chart, table


def test_the_chart_and_the_table_agree_for_the_range_picked(
    stack, new_context, team, alice, bob, conversation, artifacts
):
    today = timezone.now().date()
    for days_ago, user, prompt, cost in (
        (0, alice, 1200, "0.0125"), (1, bob, 300, "0.0031"), (3, alice, 4500, "0.2"),
        (6, bob, 80, "0"), (20, alice, 10_000, "1.5"), (45, bob, 700, "0.07"),
    ):  # fmt: skip
        seed(
            team=team, user=user, conversation=conversation, day=today - timedelta(days=days_ago),
            prompt=prompt, completion=prompt // 10, cost=cost, latency=300 + prompt // 10,
        )  # fmt: skip
    page = signed_in_page(new_context, stack, alice)
    page.goto("/t/acme/")
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_test_id("usage-chart")).to_be_visible()

    page.get_by_test_id("preset-7").click()
    expect(page).to_have_url(re.compile(r"\?days=7$"))
    expect(page.get_by_test_id("preset-7")).to_have_class(re.compile("primary"))
    page.wait_for_function("() => window.Chart && Chart.getChart('usage-chart')")
    chart, table = chart_and_table(page)
    assert chart == table
    assert len(chart["labels"]) == 7 and chart["labels"][-1] == today.isoformat()
    assert sum(chart["tokens"]) == 1320 + 330 + 4950 + 88
    assert page.get_by_test_id("total-tokens").get_attribute("data-value") == str(
        sum(chart["tokens"])
    )

    # A range of its own: from 25 to 2 days ago.
    page.get_by_test_id("range-from").fill(str(today - timedelta(days=25)))
    page.get_by_test_id("range-to").fill(str(today - timedelta(days=2)))
    page.get_by_test_id("range-show").click()
    expect(page).to_have_url(re.compile(r"from=.*&to="))
    page.wait_for_function("() => window.Chart && Chart.getChart('usage-chart')")
    chart, table = chart_and_table(page)
    assert chart == table
    assert len(chart["labels"]) == 24
    assert chart["labels"][0] == str(today - timedelta(days=25))
    assert sum(chart["tokens"]) == 4950 + 88 + 11_000
    assert round(sum(chart["cost"]), 4) == 1.7
    expect(page.get_by_test_id("total-cost")).to_have_text("$1.70")
    page.screenshot(path=str(artifacts / "usage-dashboard.png"), full_page=True)


def test_a_member_is_warned_at_80_percent_and_refused_at_100(
    stack, new_context, team, alice, bob, conversation, artifacts
):
    team.monthly_budget_usd = 1
    team.save(update_fields=["monthly_budget_usd"])
    today = timezone.now().date()
    seed(team=team, user=alice, conversation=conversation, day=today, prompt=10, cost="0.85")
    page = signed_in_page(new_context, stack, bob)
    page.goto(f"/t/acme/c/{conversation.uuid}/")
    banner = page.get_by_test_id("budget-banner")
    expect(banner).to_have_attribute("data-level", "warning")
    expect(banner).to_contain_text("This team has used 85% of its monthly budget")
    expect(page.get_by_test_id("budget-note")).to_have_text("85% of this month's budget used.")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    page.screenshot(path=str(artifacts / "budget-warning.png"))

    # Still below 100%: the message goes through and is answered.
    composer = page.get_by_test_id("composer")
    composer.fill("[[tokens=5]] hello")
    composer.press("Enter")
    expect(page.locator("#messages [data-run]")).to_have_count(1)
    expect(page.locator("#messages [data-run]").first).to_have_attribute(
        "data-status", "succeeded", timeout=15_000
    )

    # Someone else's reply spends the rest; the next message is refused before the model.
    seed(team=team, user=alice, conversation=conversation, day=today, prompt=10, cost="0.20")
    composer.fill("and another thing")
    composer.press("Enter")
    expect(page.locator("#composer-error")).to_contain_text(
        "This team has used its monthly budget of $1.00 ($1.05 spent"
    )
    expect(banner).to_have_attribute("data-level", "exhausted")
    page.screenshot(path=str(artifacts / "budget-refused.png"))
    expect(page.get_by_test_id("budget-note")).to_have_text(
        "Limit reached: new messages are refused."
    )
    assert composer.input_value() == "and another thing"
    assert Run.objects.count() == 1
    assert not Message.objects.filter(content="and another thing").exists()
