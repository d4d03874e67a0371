"""The local Kafka (KRaft, from Maven Central jars) + Redis stack for development, tests and CI."""

from deploy.local.errors import LocalStackError
from deploy.local.stack import LocalStack, ServiceStatus, StackStatus, UpResult

__all__ = ["LocalStack", "LocalStackError", "ServiceStatus", "StackStatus", "UpResult"]
