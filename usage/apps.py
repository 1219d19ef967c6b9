from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = "Usage, budgets and prices"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The chat services and the agent meter and check budgets through this; they sit below
        # usage and never import it.
        from assistant import hooks

        from .meter import UsageMeter

        hooks.register_meter(UsageMeter())

        from django.db.models.signals import post_delete, post_save

        from accounts import audit

        from . import pricing
        from .models import ModelPrice

        # Every process prices from the team's prices as saved, from the next call on.
        def on_price_changed(sender, instance, **kwargs) -> None:
            pricing.prices_changed(instance.team_id)

        post_save.connect(
            on_price_changed, sender=ModelPrice, weak=False, dispatch_uid="usage.prices"
        )
        post_delete.connect(
            on_price_changed, sender=ModelPrice, weak=False, dispatch_uid="usage.prices"
        )

        price = audit.Action.TEAM_PRICE
        audit.track(
            ModelPrice,
            fields={"input_usd_per_mtok": price, "output_usd_per_mtok": price},
            created=price,
            deleted=price,
            team=lambda row: row.team,
            label=lambda row: row.model,
        )
