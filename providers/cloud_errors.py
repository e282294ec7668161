"""The one place where cloud SDK errors become cloudmig errors.

    from cloudmig.providers import cloud_errors
    with cloud_errors.translated("aws", "creating the security group of h3"):
        ec2.create_security_group(...)
    # botocore ClientError InstanceLimitExceeded ->
    #   ProviderError("aws refused creating ... (InstanceLimitExceeded: ...). This is a quota: ...",
    #                 code="InstanceLimitExceeded")

The cloud's own error code is kept in ``ProviderError.code``; the message says what failed
and the hint names the fix (quota, capacity, credentials, region, instance type, image).
SDK modules are never imported here: an exception is recognised by its class's module, so
this works whether or not boto3 / azure-core are installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from cloudmig import errors

__all__ = ["translated", "translate", "error_code", "is_not_found"]


@dataclasses.dataclass(frozen=True)
class _Kind:
    codes: frozenset[str]
    fragments: tuple[str, ...]     # matched anywhere in the code
    hint: str | dict[str, str]     # one hint, or one per provider

    def hint_for(self, provider: str) -> str | None:
        return self.hint if isinstance(self.hint, str) else self.hint.get(provider)


# One row per kind of failure; codes are compared case-insensitively.
_KINDS: dict[str, _Kind] = {
    "auth": _Kind(
        frozenset(c.lower() for c in (
            "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
            "ExpiredToken", "RequestExpired", "NoCredentials", "PartialCredentials", "ProfileNotFound",
            "InvalidAuthenticationToken", "InvalidAuthenticationTokenTenant", "ExpiredAuthenticationToken",
            "AuthenticationFailed", "CredentialUnavailable", "ClientAuthentication")),
        ("invalidauthenticationtoken",),
        {"aws": "Check the AWS credentials: AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(`aws sts get-caller-identity` must work).",
         "azure": "Sign in with `az login`, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET "
                  "(a service principal)."}),
    "permission": _Kind(
        frozenset(c.lower() for c in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException",
                                      "AuthorizationFailed", "LinkedAuthorizationFailed")),
        (),
        "The credentials work but lack a permission: grant the identity the EC2 actions or the "
        "Azure role (Contributor on the subscription or resource group) that cloudmig needs."),
    "quota": _Kind(
        frozenset(c.lower() for c in ("InstanceLimitExceeded", "VcpuLimitExceeded", "AddressLimitExceeded",
                                      "MaxSpotInstanceCountExceeded", "QuotaExceeded",
                                      "OperationNotAllowed", "PublicIPCountLimitReached")),
        ("limitexceeded", "quotaexceeded"),
        "This is a quota of the account: destroy unused hosts (`cloudmig hosts`) or ask the cloud "
        "for a higher limit (AWS Service Quotas; Azure portal, Usage + quotas)."),
    "capacity": _Kind(
        frozenset(c.lower() for c in ("InsufficientInstanceCapacity", "InsufficientHostCapacity",
                                      "Unsupported", "AllocationFailed", "ZonalAllocationFailed",
                                      "OverconstrainedAllocationRequest", "SkuNotAvailable")),
        ("insufficient",),
        "The cloud has no capacity for this size here right now: retry later, or pick another "
        "instance type / vm_size or region / location with --option."),
    "region": _Kind(
        frozenset(c.lower() for c in ("OptInRequired", "InvalidRegion", "UnrecognizedRegion", "NoRegion",
                                      "EndpointConnection", "LocationNotAvailableForResourceType",
                                      "NoRegisteredProviderFound", "InvalidLocation",
                                      "SubscriptionNotFound", "InvalidSubscriptionId")),
        (),
        "Check the region/location and subscription: set AWS_REGION or --option region=...; for "
        "azure --option location=... and AZURE_SUBSCRIPTION_ID or --option subscription_id=...."),
    "instance-type": _Kind(
        frozenset(c.lower() for c in ("InvalidInstanceType", "InvalidInstanceType.NotFound",
                                      "InvalidParameterValue.InstanceType", "VMSizeNotSupported",
                                      "InvalidVmSize")),
        ("invalidinstancetype",),
        "Pick an instance type the region offers (--option instance_type=... for aws, "
        "--option vm_size=... for azure)."),
    "image": _Kind(
        frozenset(c.lower() for c in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed",
                                      "InvalidAMIID.Unavailable", "ImageNotFound", "PlatformImageNotFound",
                                      "InvalidImageReference")),
        ("invalidamiid",),
        "Check the image: leave out --option image to use the newest official Debian 12 image, "
        "or give one that exists in this region."),
}

_NOT_FOUND_CODES = frozenset(c.lower() for c in (
    "InvalidInstanceID.NotFound", "InvalidGroup.NotFound", "InvalidKeyPair.NotFound",
    "InvalidAllocationID.NotFound", "InvalidAssociationID.NotFound", "InvalidAddress.NotFound",
    "ResourceNotFound", "ResourceGroupNotFound", "NotFound"))


def _module_of(exc: BaseException) -> str:
    return type(exc).__module__ or ""


def error_code(exc: BaseException) -> str | None:
    """The cloud's own error code carried by an SDK exception, if any."""
    module = _module_of(exc)
    if module.startswith("botocore"):
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
        # botocore's own client-side errors (NoCredentialsError, NoRegionError, ...)
        return type(exc).__name__.removesuffix("Error")
    if module.startswith("azure"):
        inner = getattr(exc, "error", None)
        code = getattr(inner, "code", None)
        if code:
            return str(code)
        if type(exc).__name__ in ("ClientAuthenticationError", "CredentialUnavailableError"):
            return type(exc).__name__.removesuffix("Error")
        status = getattr(exc, "status_code", None)
        return f"HTTP{status}" if status else None
    return None


def is_not_found(exc: BaseException) -> bool:
    code = error_code(exc)
    if code is not None and code.lower() in _NOT_FOUND_CODES:
        return True
    return _module_of(exc).startswith("azure") and getattr(exc, "status_code", None) == 404


def _kind_of(code: str | None) -> _Kind | None:
    if not code:
        return None
    low = code.lower()
    for kind in _KINDS.values():
        if low in kind.codes or any(f in low for f in kind.fragments):
            return kind
    return None


def _cloud_message(exc: BaseException) -> str:
    inner = getattr(exc, "error", None)           # azure: ODataV4Format with code/message
    message = getattr(inner, "message", None)
    if not message:
        response = getattr(exc, "response", None)  # botocore: parsed error document
        if isinstance(response, dict):
            message = response.get("Error", {}).get("Message")
    text = str(message or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# azure-identity's credential chain explains each credential it tried, over many lines: its
# failure is said in one sentence instead.
_NO_CREDENTIAL_CODES = frozenset({"ClientAuthentication", "CredentialUnavailable"})


def translate(exc: BaseException, provider: str, action: str) -> errors.ProviderError:
    """A ProviderError for ``exc``, raised by a cloud SDK while ``action`` was under way."""
    code = error_code(exc)
    kind = _kind_of(code)
    if provider == "azure" and code in _NO_CREDENTIAL_CODES:
        return errors.ProviderError(f"azure: no usable Azure credentials (needed for {action}).",
                                    hint=kind.hint_for(provider) if kind else None, code=code)
    detail = _cloud_message(exc)
    shown = f"{code}: {detail}" if code and not detail.startswith(code) else detail
    return errors.ProviderError(f"{provider} refused {action} ({shown}).",
                                hint=kind.hint_for(provider) if kind else None, code=code)


def _is_sdk_error(exc: BaseException) -> bool:
    module = _module_of(exc)
    return module.startswith(("botocore", "boto3", "azure", "msal"))


@contextlib.contextmanager
def translated(provider: str, action: str) -> Iterator[None]:
    """Turn any cloud SDK exception raised inside the block into a ProviderError."""
    try:
        yield
    except errors.CloudmigError:
        raise
    except Exception as exc:
        if not _is_sdk_error(exc):
            raise
        raise translate(exc, provider, action) from exc
