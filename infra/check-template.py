"""Least privilege as deployed: transforms template.yaml the way SAM does (samtranslator) and
fails if any IAM statement in the result allows a DynamoDB, OpenSearch, logs, S3, Lambda or
Step Functions action on "*", or if SAM added a role or a managed policy of its own (for a
DynamoDB event source it would attach AWSLambdaDynamoDBExecutionRole, which reads every
table's stream).

Also checks the export-load state machine, which `sam validate --lint` does not look into:
every transition names a state that exists, every state type is one Step Functions knows, and
every payload sent to the export loader is a step it accepts with the fields it needs. And that
no failure goes unnoticed and no export leaves the account: the quarantine is on with the
default parameters, alarms watch ReportedPermanent and the failure bucket, the export task
names the bucket's owner and every export read is bound to this account (s3:ResourceAccount).

    python infra/check-template.py [template.yaml]

Run with the Python that has aws-sam-cli (it brings samtranslator)."""

import os
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

SCOPED = ("dynamodb:", "es:", "aoss:", "logs:", "s3:", "lambda:", "states:")

# The roles the template declares itself; any other is one SAM added.
ROLES = {"FunctionRole", "ExportLoaderRole", "ExportLoadRole"}

STATE_TYPES = {"Task", "Pass", "Choice", "Wait", "Succeed", "Fail", "Parallel", "Map"}

# What `backfill::worker::Step` (src/tools/backfill/worker.rs) requires of each step.
LOADER_STEPS = {
    "prepare": {"table", "run"},
    "open": {"bucket", "manifest"},
    "load": {"bucket", "dir", "file", "exportTime", "table", "keys"},
    "finish": {"previous", "run"},
}


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


def check_machine(machine, where):
    """Transitions, state types and loader payloads of a state machine (and of every Map's
    item processor)."""
    findings = []
    states = machine.get("States", {})
    if machine.get("StartAt") not in states:
        findings.append(f"{where}: StartAt {machine.get('StartAt')!r} is not a state")
    for name, state in states.items():
        at = f"{where}.{name}"
        if state.get("Type") not in STATE_TYPES:
            findings.append(f"{at}: unknown Type {state.get('Type')!r}")
        targets = [state.get("Next"), state.get("Default")]
        targets += [c.get("Next") for c in state.get("Choices", [])]
        for target in targets:
            if target is not None and target not in states:
                findings.append(f"{at}: goes to {target!r}, which is not a state")
        if state.get("Type") not in ("Choice", "Succeed", "Fail") and not (
            state.get("Next") or state.get("End")
        ):
            findings.append(f"{at}: neither Next nor End")
        payload = state.get("Parameters", {}).get("Payload")
        if isinstance(payload, dict):
            findings.extend(check_step(payload, at))
        if state.get("Type") == "Map":
            findings.extend(check_step(state.get("ItemSelector", {}), f"{at}.ItemSelector"))
            findings.extend(check_machine(state.get("ItemProcessor", {}), f"{at}.ItemProcessor"))
    return findings


def evaluate(node, parameters, conditions):
    """A node's value for these parameter values: Ref, Fn::If, Fn::Equals, Fn::Not and Fn::Sub
    (a string, or a string with its own variables) evaluated; anything else left as it is."""
    ev = lambda n: evaluate(n, parameters, conditions)
    if isinstance(node, dict) and len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref" and arg in parameters:
            return parameters[arg]
        if fn == "Fn::If":
            name, yes, no = arg
            return ev(yes) if ev(conditions[name]) else ev(no)
        if fn == "Fn::Equals":
            return ev(arg[0]) == ev(arg[1])
        if fn == "Fn::Not":
            return not ev(arg[0])
        if fn == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else arg
            values = {**parameters, **{k: ev(v) for k, v in variables.items()}}
            for name, value in values.items():
                if isinstance(value, str):
                    text = text.replace("${" + name + "}", value)
            return text
    return node


def check_safety(template, parameters):
    """What the deployment must do so that no failure goes unnoticed and no export leaves the
    account: the quarantine on by default, alarms on permanent failures and on the failure
    bucket, the export task and its readers bound to this account."""
    findings = []
    resources = template["Resources"]
    values = {
        name: p.get("Default")
        for name, p in template["Parameters"].items()
    }
    values.update(parameters)
    conditions = {name: c for name, c in template["Conditions"].items()}
    env = resources["StreamIndexerFunction"]["Properties"]["Environment"]["Variables"]
    quarantine = evaluate(env.get("QUARANTINE_INDEX", ""), values, conditions)
    if not quarantine:
        findings.append("the quarantine is off with the default parameters")
    alarms = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    if not any(a.get("MetricName") == "ReportedPermanent" for a in alarms):
        findings.append("no alarm on ReportedPermanent")
    rules = {
        name
        for name, r in resources.items()
        if r["Type"] == "AWS::Events::Rule"
        and r["Properties"]["EventPattern"].get("detail", {}).get("bucket", {}).get("name")
        == [{"Ref": "FailedBatchesBucket"}]
    }
    watched = {
        d.get("Value", {}).get("Ref")
        for a in alarms
        if a.get("MetricName") == "MatchedEvents"
        for d in a.get("Dimensions", [])
    }
    if not rules & watched:
        findings.append("no alarm on batches written to the failure bucket")
    for name, r in resources.items():
        if r["Type"] == "AWS::Serverless::Function":
            logging = r["Properties"].get("LoggingConfig", {})
            if logging.get("LogFormat") != "JSON":
                findings.append(f"{name}: LoggingConfig.LogFormat is not JSON (its log lines and level)")
    bridge = resources["FailedBatchesBucket"]["Properties"].get("NotificationConfiguration", {})
    if not bridge.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
        findings.append("the failure bucket does not send its events to EventBridge")
    machine = resources["ExportLoadStateMachine"]["Properties"]
    export = machine["Definition"]["States"]["Export"]["Parameters"]
    if "S3BucketOwner" not in export:
        findings.append("the export task has no S3BucketOwner")
    for role in ("ExportLoaderRole", "ExportLoadRole"):
        for policy in resources[role]["Properties"]["Policies"]:
            for statement in statements(policy["PolicyDocument"]):
                reads = [a for a in as_list(statement.get("Action", [])) if a == "s3:GetObject"]
                account = statement.get("Condition", {}).get("StringEquals", {})
                if reads and "s3:ResourceAccount" not in account:
                    findings.append(f"{role}: s3:GetObject without an s3:ResourceAccount condition")
    return findings


def check_loader_scope(template):
    """The export loader's OpenSearch grants: with Routes (index names IAM cannot know) only HEAD
    and PUT (creating an index) may reach any path of the domain, and paths starting with `_`
    (the cluster's: settings, templates, snapshots, a _bulk to any index) are denied."""
    findings = []
    wide = "${OpenSearchResourceArn}/*"
    allowed_wide, denied = set(), False
    for policy in template["Resources"]["ExportLoaderRole"]["Properties"]["Policies"]:
        for statement in statements(policy["PolicyDocument"]):
            resources = [
                r.get("Fn::Sub") if isinstance(r, dict) else r
                for item in as_list(statement.get("Resource", []))
                for r in branches(item)
            ]
            if statement["Effect"] == "Deny" and "${OpenSearchResourceArn}/_*" in resources:
                denied = True
            if statement["Effect"] == "Allow" and wide in resources:
                allowed_wide |= set(as_list(statement.get("Action", [])))
    extra = allowed_wide - {"es:ESHttpHead", "es:ESHttpPut"}
    if extra:
        findings.append(f"ExportLoaderRole: {sorted(extra)} on every path of the domain")
    if not denied:
        findings.append("ExportLoaderRole: the domain's _ paths (the cluster's) are not denied")
    return findings


def check_step(payload, at):
    """A payload for the export loader: a known step with the fields it requires."""
    step = payload.get("step")
    if step not in LOADER_STEPS:
        return [f"{at}: step {step!r} is not one the loader knows ({sorted(LOADER_STEPS)})"]
    fields = {k[:-2] if k.endswith(".$") else k for k in payload} - {"step"}
    missing = LOADER_STEPS[step] - fields
    return [f"{at}: step {step!r} lacks {sorted(missing)}"] if missing else []


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
        "ExportBucket": "exports",
    }
    output = transform(template, parameters, NoManagedPolicies())
    findings = []
    roles = set()
    for name, resource in output["Resources"].items():
        kind = resource["Type"]
        props = resource.get("Properties", {})
        if kind == "AWS::IAM::Role":
            roles.add(name)
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
    if roles != set(ROLES):
        findings.append(f"IAM roles {sorted(roles)}; expected only {sorted(ROLES)}")
    machine = template["Resources"]["ExportLoadStateMachine"]["Properties"]["Definition"]
    findings.extend(check_machine(machine, "ExportLoadStateMachine"))
    findings.extend(check_safety(template, parameters))
    findings.extend(check_loader_scope(template))
    for finding in findings:
        print(f"template check: {finding}", file=sys.stderr)
    if findings:
        sys.exit(1)
    print(
        f"{path}: every dynamodb/es/aoss/logs/s3/lambda/states grant is scoped to a resource; "
        f"roles {sorted(ROLES)} only; the export-load state machine is well formed; the "
        f"quarantine is on by default, permanent failures and failed batches raise alarms, "
        f"exports stay in this account"
    )


if __name__ == "__main__":
    main()
