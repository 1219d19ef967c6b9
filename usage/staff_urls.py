from django.urls import path

from . import views

# Under /staff/usage/: site staff (is_staff) only; 404 for everyone else.
urlpatterns = [
    path("", views.staff_dashboard, name="staff_usage"),
    path("export.csv", views.staff_csv, name="staff_usage_csv"),
]
