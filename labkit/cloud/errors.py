"""Errors every service raises; each service turns them into its own error body.

Models raise these and never see HTTP; a service's handlers map them with its
own formatter (keystone's `{"error": ...}`, nova's `{"itemNotFound": ...}`, ...).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses, with the HTTP status it answers."""

    status = 500
    title = "Internal Server Error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message

    default_message = "An unexpected error prevented the server from fulfilling your request."


class BadRequest(ServiceError):
    status = 400
    title = "Bad Request"
    default_message = "The request could not be understood."


class Unauthorized(ServiceError):
    status = 401
    title = "Unauthorized"
    default_message = "The request you have made requires authentication."


class Forbidden(ServiceError):
    status = 403
    title = "Forbidden"
    default_message = "You are not authorized to perform the requested action."


class NotFound(ServiceError):
    status = 404
    title = "Not Found"
    default_message = "The resource could not be found."


class MethodNotAllowed(ServiceError):
    status = 405
    title = "Method Not Allowed"
    default_message = "The method is not allowed for the requested URL."


class PayloadTooLarge(ServiceError):
    status = 413
    title = "Request Entity Too Large"
    default_message = "Request is too large."


class NotAcceptable(ServiceError):
    status = 406
    title = "Not Acceptable"
    default_message = "The requested microversion is not supported."


class Conflict(ServiceError):
    status = 409
    title = "Conflict"
    default_message = "Conflict occurred attempting to store the resource."
