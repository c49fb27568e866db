from django.contrib import admin
from django.urls import include, path

from chat import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("chat.urls")),
]

handler400 = "chat.views.bad_request"
handler403 = "chat.views.permission_denied"
handler404 = "chat.views.page_not_found"
handler500 = "chat.views.server_error"
