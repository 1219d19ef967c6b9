from django.contrib import admin

from .models import ShareLink, SharingPolicy


@admin.register(ShareLink)
class ShareLinkAdmin(admin.ModelAdmin):
    list_display = ("uuid", "conversation", "audience", "mode", "created_by", "created")
    list_filter = ("audience", "mode")
    # The hash is useless without the token, but nothing here should look editable.
    readonly_fields = [f.name for f in ShareLink._meta.fields]


@admin.register(SharingPolicy)
class SharingPolicyAdmin(admin.ModelAdmin):
    list_display = ("team", "allow_public_links", "updated_by", "updated")
