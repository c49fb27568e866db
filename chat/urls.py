from django.urls import path, re_path

from . import api, eventstreams, health, views

urlpatterns = [
    path("", views.home, name="home"),
    path("c/<uuid:conversation_id>/", views.conversation_page, name="conversation"),
    path("settings/tokens/", views.api_tokens_page, name="api_tokens"),
    path("settings/tokens/<int:token_id>/revoke/", views.api_token_revoke, name="api_token_revoke"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/models/", api.models_list),
    path("api/conversations/", api.conversations),
    path("api/conversations/<str:conversation_id>/", api.conversation_detail),
    path("api/conversations/<str:conversation_id>/export/", api.conversation_export),
    path("api/conversations/<str:conversation_id>/members/", api.members),
    path("api/conversations/<str:conversation_id>/members/<str:username>/", api.member_detail),
    path("api/conversations/<str:conversation_id>/messages/", api.messages),
    path("api/conversations/<str:conversation_id>/messages/<str:message_id>/stop/", api.message_stop),
    path("api/conversations/<str:conversation_id>/messages/<str:message_id>/regenerate/", api.message_regenerate),
    path("api/conversations/<str:conversation_id>/events/", eventstreams.events),
    path("api/events/", eventstreams.user_events),
    path("api/users/", api.users),
    path("api/tokens/", api.tokens),
    path("api/tokens/<str:token_id>/", api.token_detail),
    # Anything else under /api/ is a JSON 404, not an HTML page.
    re_path(r"^api/", api.not_found),
]
