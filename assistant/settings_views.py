"""A team's settings for the assistant (admins only): its model, API base, key and
temperature, with a Test connection button, and the commands the agent runs without asking.
Routes in settings_urls.py, under t/<slug>/settings/."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors

from . import policy
from .llm import LLMError, check_connection, config_for_team, site_config
from .llm.known import known_models


class LLMSettingsForm(forms.Form):
    llm_model = forms.CharField(
        label="Model",
        max_length=200,
        required=False,
        help_text="A litellm model name, e.g. openai/gpt-4o, anthropic/claude-sonnet-4-5, "
        "ollama_chat/llama3.1 (type a provider and / for suggestions). Empty: the site default.",
        # Suggestions from litellm's list (assistant/llm/known.py); any name may be typed.
        widget=forms.TextInput(attrs={"list": "known-models", "autocomplete": "off"}),
    )
    llm_api_base = forms.URLField(
        label="API base URL",
        max_length=500,
        required=False,
        assume_scheme="https",
        help_text="Only for a self-hosted or proxy endpoint (Ollama, vLLM, a gateway), e.g. "
        "http://ollama.internal:11434. Empty: the provider's own address.",
    )
    llm_api_key = forms.CharField(
        label="API key",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted and never shown again. Leave empty to keep the current key.",
    )
    clear_api_key = forms.BooleanField(label="Remove the stored key", required=False)
    llm_temperature = forms.FloatField(
        label="Temperature",
        required=False,
        min_value=0.0,
        max_value=2.0,
        help_text="0 to 2. Lower is more predictable (0–0.3 suits code), higher more varied. "
        "Empty: the model's default.",
    )

    def clean_llm_api_base(self) -> str:
        # Imported here: llm.bases brings aiohttp, which the web process needs only for this.
        from .llm.bases import BaseRefused, check_saved

        value = self.cleaned_data["llm_api_base"]
        try:
            check_saved(value)
        except BaseRefused as exc:
            raise forms.ValidationError(str(exc)) from exc
        return value


def _apply_llm_settings(team, data: dict) -> None:
    """Form values onto the team; an empty key field keeps the stored key."""
    team.llm_model = data["llm_model"].strip()
    team.llm_api_base = data["llm_api_base"].strip()
    team.llm_temperature = data["llm_temperature"]
    if data["clear_api_key"]:
        team.llm_api_key = ""
    elif data["llm_api_key"]:
        team.llm_api_key = data["llm_api_key"]


@login_required
@require_http_methods(["GET", "POST"])
def team_settings(request: HttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    team = membership.team
    initial = {
        "llm_model": team.llm_model,
        "llm_api_base": team.llm_api_base,
        "llm_temperature": team.llm_temperature,
    }
    form = LLMSettingsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        _apply_llm_settings(team, form.cleaned_data)
        team.save()
        messages.success(request, "Settings saved.")
        return redirect("team_settings", slug=slug)
    guarded = policy.guarded_entries(team)
    context = {
        "team": team,
        "membership": membership,
        "form": form,
        "allowlist": team.command_allowlist,
        "allowlist_entries": [
            {"prefix": p, "runs_code": policy.runs_repository_code(p), "guarded": p in guarded}
            for p in policy.prefixes(team)
        ],
        "has_key": bool(team.llm_api_key_encrypted),
        "effective": config_for_team(team),
        "site": site_config(),
        "known_models": known_models(),
    }
    return render(request, "assistant/team_settings.html", context)


@login_required
@require_POST
def team_settings_test(request: HttpRequest, slug: str) -> HttpResponse:
    membership = selectors.admin_membership_for(request.user, slug)
    # Test what is in the form, before saving it; an empty key field means the stored key.
    team = membership.team
    form = LLMSettingsForm(request.POST)
    if request.POST and form.is_valid():
        _apply_llm_settings(team, form.cleaned_data)  # on this copy only: nothing is saved
    elif request.POST:
        errors = " ".join(" ".join(map(str, errs)) for errs in form.errors.values())
        return render(request, "assistant/_test_result.html", {"ok": False, "text": errors})
    try:
        result = async_to_sync(check_connection)(config_for_team(team))
    except LLMError as exc:
        return render(request, "assistant/_test_result.html", {"ok": False, "text": exc.message})
    return render(request, "assistant/_test_result.html", {"ok": True, "text": result})


@login_required
@require_POST
def team_agent_policy(request: HttpRequest, slug: str) -> HttpResponse:
    """The commands the agent may run without asking (admins only)."""
    membership = selectors.admin_membership_for(request.user, slug)
    team = membership.team
    try:
        team.command_allowlist = policy.validate_allowlist(request.POST.get("allowlist", ""))
    except ValueError as exc:
        messages.error(request, f"The allowlist was not saved. {exc}")
    else:
        # Entries shown with a checkbox are guarded as ticked; new ones that run the
        # repository's code start guarded (untick to lift it).
        shown, ticked = set(request.POST.getlist("shown")), set(request.POST.getlist("guarded"))
        entries = policy.prefixes(team)
        policy.set_guarded(
            team,
            {
                e
                for e in entries
                if e in ticked or (e not in shown and policy.runs_repository_code(e))
            },
        )
        team.commands_reach_registries = request.POST.get("commands_reach_registries") == "1"
        team.save(
            update_fields=[
                "command_allowlist",
                "command_allowlist_guarded",
                "commands_reach_registries",
            ]
        )
        count = len(entries)
        messages.success(
            request,
            f"Saved: {count} command prefix{'es' if count != 1 else ''} run without asking."
            if count
            else "Saved: every command asks a member first.",
        )
        guarded = policy.guarded_entries(team)
        if risky := [e for e in entries if policy.runs_repository_code(e) and e not in guarded]:
            messages.warning(
                request,
                f"{', '.join(f'“{e}”' for e in risky)} run{'s' if len(risky) == 1 else ''} the "
                "repository's own code: once the agent has written a file, it can run anything "
                "it wrote this way without asking.",
            )
    return redirect("team_settings", slug=slug)
