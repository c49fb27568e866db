from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chat import oidc, views

# Django's auth views, named as django.contrib.auth.urls names them.
account_patterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(
            form_class=oidc.PasswordLoginForm,
            extra_context={
                "oidc_provider_name": settings.OIDC_PROVIDER_NAME if settings.OIDC_ISSUER else "",
                "password_login": settings.PASSWORD_LOGIN,
            },
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
]
# Password reset sends email: without a mail server it would only make
# anonymous visitors' requests try SMTP, so it exists only with EMAIL_HOST.
if settings.EMAIL_HOST:
    account_patterns += [
        path("password_reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
        path("password_reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
        path("reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
        path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    ]

# PASSWORD_LOGIN=false holds on the admin's login page too (superusers only).
admin.site.login_form = oidc.AdminPasswordLoginForm

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/", include(account_patterns)),
    path("", include("chat.urls")),
]

# OpenID Connect sign-in (chat/oidc.py): the button's target and the provider's redirect URI.
if settings.OIDC_ISSUER:
    urlpatterns += [
        path("oidc/authenticate/", oidc.AuthenticateView.as_view(), name="oidc_authentication_init"),
        path("oidc/callback/", oidc.CallbackView.as_view(), name="oidc_authentication_callback"),
    ]

handler400 = "chat.handlers.bad_request"
handler403 = "chat.handlers.permission_denied"
handler404 = "chat.handlers.page_not_found"
handler500 = "chat.handlers.server_error"
