from __future__ import annotations

from decimal import Decimal

from django import forms


class BudgetForm(forms.Form):
    monthly_budget_usd = forms.DecimalField(
        label="Monthly budget (USD)",
        required=False,
        min_value=Decimal(0),
        max_digits=12,
        decimal_places=2,
        help_text="Per calendar month (UTC). Empty: no limit.",
    )
    member_daily_tokens = forms.IntegerField(
        label="Tokens per member per day",
        required=False,
        min_value=0,
        max_value=10**15,
        help_text="Prompt and completion tokens, per UTC day. Empty: no limit.",
    )


class PriceForm(forms.Form):
    model = forms.CharField(
        max_length=200, help_text="As in the model setting, e.g. ollama_chat/llama3.1"
    )
    input_usd_per_mtok = forms.DecimalField(
        label="Input, USD per 1M tokens", min_value=Decimal(0), max_digits=12, decimal_places=4
    )
    output_usd_per_mtok = forms.DecimalField(
        label="Output, USD per 1M tokens", min_value=Decimal(0), max_digits=12, decimal_places=4
    )

    def clean_model(self) -> str:
        model = self.cleaned_data["model"].strip()
        if not model:
            raise forms.ValidationError("Name the model.")
        return model
