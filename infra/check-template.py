"""Least privilege as deployed: transforms template.yaml the way SAM does (samtranslator) and
fails if any IAM statement in the result allows a DynamoDB, OpenSearch, logs or S3 action on
"*", or if SAM added a role or a managed policy of its own (for a DynamoDB event source it
would attach AWSLambdaDynamoDBExecutionRole, which reads every table's stream).

    python infra/check-template.py [template.yaml]

Run with the Python that has aws-sam-cli (it brings samtranslator)."""

import os
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

SCOPED = ("dynamodb:", "es:", "aoss:", "logs:", "s3:")


class NoManagedPolicies:
    """The explicit role needs no managed policy; asking for one is a finding in itself."""

    def load(self):
        return {}


def branches(node):
    """Every concrete value a node can take: both sides of each Fn::If."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        _, yes, no = node["Fn::If"]
        yield from branches(yes)
        yield from branches(no)
    else:
        yield node


def statements(document):
    for value in branches(document.get("Statement", [])):
        for item in value if isinstance(value, list) else [value]:
            for statement in branches(item):
                if isinstance(statement, dict) and "Effect" in statement:
                    yield statement


def as_list(value):
    return value if isinstance(value, list) else [value]


def main():
    # Pseudo parameters (AWS::Region) need a region; nothing is sent anywhere.
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    with open(path) as f:
        template = yaml_parse(f.read())
    # As `sam package` leaves it: code in S3.
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://bucket/stream-indexer.zip"
    parameters = {
        "TableStreamArn": "arn:aws:dynamodb:eu-west-1:123456789012:table/t/stream/2026-01-01T00:00:00.000",
        "OpenSearchUrl": "https://search-x.eu-west-1.es.amazonaws.com",
        "OpenSearchIndex": "items",
        "OpenSearchResourceArn": "arn:aws:es:eu-west-1:123456789012:domain/x",
    }
    output = transform(template, parameters, NoManagedPolicies())
    findings = []
    roles = 0
    for name, resource in output["Resources"].items():
        kind = resource["Type"]
        props = resource.get("Properties", {})
        if kind == "AWS::IAM::Role":
            roles += 1
            if props.get("ManagedPolicyArns"):
                findings.append(f"{name}: managed policies {props['ManagedPolicyArns']}")
            documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents = [props["PolicyDocument"]]
        else:
            continue
        for document in documents:
            for statement in statements(document):
                if statement["Effect"] != "Allow":
                    continue
                actions = as_list(statement.get("Action", []))
                scoped = [a for a in actions if isinstance(a, str) and a.startswith(SCOPED)]
                wide = [r for r in as_list(statement.get("Resource", [])) if r == "*"]
                if scoped and wide:
                    findings.append(f"{name}: {scoped} on *")
    if roles != 1:
        findings.append(f"{roles} IAM roles; expected only FunctionRole")
    for finding in findings:
        print(f"template grants too much: {finding}", file=sys.stderr)
    if findings:
        sys.exit(1)
    print(f"{path}: every dynamodb/es/aoss/logs/s3 grant is scoped to a resource; one role")


if __name__ == "__main__":
    main()
