from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views
from assistant.urls import run_urlpatterns

urlpatterns = [
    path("", account_views.home, name="home"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("teams/new/", account_views.team_create, name="team_create"),
    path("invite/<str:token>/", account_views.invitation_accept, name="invitation_accept"),
    path("t/<slug:slug>/", include("accounts.urls")),
    path("t/<slug:slug>/", include("assistant.urls")),
    path("t/<slug:slug>/", include("assistant.repo_urls")),
    *run_urlpatterns,
]
