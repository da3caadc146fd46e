//! `clima kafka-acls`: the Kafka ACLs the writer and the consumers need for the
//! given topic and group, as the `acls` of a Strimzi KafkaUser (YAML-compatible
//! JSON). `ci/check_k8s.py` runs it with each overlay's settings and proves the
//! KafkaUser grants every one of them.

use clima_broker::kafka::{Acl, AclResource, KafkaConfig};
use clima_consumer::kafka::KafkaSourceConfig;

use crate::flags::{KafkaFlags, KafkaSourceFlags};

#[derive(Debug, clap::Args)]
pub(crate) struct KafkaAclsArgs {
    #[command(flatten)]
    kafka: KafkaFlags,
    #[command(flatten)]
    kafka_source: KafkaSourceFlags,
}

pub(crate) fn run(args: KafkaAclsArgs) -> anyhow::Result<()> {
    let kafka = KafkaConfig::from(args.kafka);
    let source = KafkaSourceConfig::from(args.kafka_source);
    let mut acls = kafka.writer_acls();
    acls.extend(kafka.consumer_acls(&source.group));
    println!("{}", serde_json::to_string_pretty(&merged(acls))?);
    Ok(())
}

/// One entry per resource, with the union of the operations, in Strimzi's shape.
fn merged(acls: Vec<Acl>) -> Vec<serde_json::Value> {
    let mut by_resource: Vec<(AclResource, Vec<&str>)> = Vec::new();
    for acl in acls {
        match by_resource.iter_mut().find(|(resource, _)| *resource == acl.resource) {
            Some((_, operations)) => {
                for operation in acl.operations {
                    if !operations.contains(operation) {
                        operations.push(operation);
                    }
                }
            }
            None => by_resource.push((acl.resource, acl.operations.to_vec())),
        }
    }
    by_resource
        .into_iter()
        .map(|(resource, operations)| {
            let resource = match resource {
                AclResource::Topic(name) => {
                    serde_json::json!({"type": "topic", "name": name, "patternType": "literal"})
                }
                AclResource::Group(name) => {
                    serde_json::json!({"type": "group", "name": name, "patternType": "literal"})
                }
                AclResource::Cluster => serde_json::json!({"type": "cluster"}),
            };
            serde_json::json!({ "resource": resource, "operations": operations })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_resource_appears_once_with_every_operation_it_needs() {
        let acls = merged(vec![
            Acl { resource: AclResource::Topic("t".into()), operations: &["Describe", "Write"] },
            Acl { resource: AclResource::Cluster, operations: &["IdempotentWrite"] },
            Acl { resource: AclResource::Topic("t".into()), operations: &["Describe", "Read"] },
        ]);
        assert_eq!(acls.len(), 2);
        assert_eq!(acls[0]["resource"], serde_json::json!({"type": "topic", "name": "t", "patternType": "literal"}));
        assert_eq!(acls[0]["operations"], serde_json::json!(["Describe", "Write", "Read"]));
        assert_eq!(acls[1]["resource"], serde_json::json!({"type": "cluster"}));
    }
}
