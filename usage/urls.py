from django.urls import path

from . import views

# Under /t/<slug>/usage/: team admins only, except the members' budget banner.
urlpatterns = [
    path("", views.team_dashboard, name="usage_dashboard"),
    path("export.csv", views.team_csv, name="usage_csv"),
    path("budget/", views.team_budget_save, name="usage_budget"),
    path("prices/", views.team_prices_save, name="usage_prices"),
    path("banner/", views.banner, name="usage_banner"),
]
