use clima_proto::v1::writer_service_client::WriterServiceClient;
use clima_proto::v1::{PublishRequest, TweetRecord};
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::TestStack;

#[tokio::test]
async fn writers_list_their_services_over_reflection_v1_and_v1alpha() {
    let stack = TestStack::spawn().await;
    for writer in [stack.kafka_writer, stack.rabbitmq_writer] {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{writer}")).unwrap().connect().await.unwrap();

        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut answers = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("v1 reflection did not list services");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"clima.v1.WriterService".to_owned()), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");

        let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "clima.v1.WriterService".into(),
            )),
        };
        let mut answers = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
        assert!(matches!(
            answers.message().await.unwrap().unwrap().message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ));
    }
}

#[tokio::test]
async fn writers_answer_invalid_argument_for_bad_records() {
    let stack = TestStack::spawn().await;
    let mut writer = WriterServiceClient::connect(format!("http://{}", stack.rabbitmq_writer)).await.unwrap();

    let empty = writer.publish(PublishRequest { records: vec![] }).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);

    let mut bad = clima_testkit::record("GT", clima_proto::v1::Weather::Soleado);
    bad.tweet.as_mut().unwrap().country = "ZZ".into();
    let status = writer.publish(PublishRequest { records: vec![bad] }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("records[0].country"), "{}", status.message());

    let no_time = TweetRecord { received_at: None, ..clima_testkit::record("GT", clima_proto::v1::Weather::Soleado) };
    let status = writer.publish(PublishRequest { records: vec![no_time] }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // One UUID in other spellings would be one tweet counted several times:
    // only the canonical one is an id (it is counted below, once).
    let canonical = clima_testkit::record("GT", clima_proto::v1::Weather::Soleado);
    let id = canonical.id.clone();
    for spelling in [id.to_uppercase(), format!("{{{id}}}"), format!("urn:uuid:{id}"), id.replace('-', "")] {
        let record = TweetRecord { id: spelling.clone(), ..canonical.clone() };
        let status = writer.publish(PublishRequest { records: vec![record] }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{spelling}");
        assert!(status.message().contains("records[0].id"), "{}", status.message());
    }
    writer.publish(PublishRequest { records: vec![canonical] }).await.unwrap();

    // A received time far from the writer's clock (year 9999) is refused too.
    let mut far = clima_testkit::record("GT", clima_proto::v1::Weather::Soleado);
    far.received_at.as_mut().unwrap().seconds = 253_402_300_799;
    let status = writer.publish(PublishRequest { records: vec![far] }).await.unwrap_err();
    assert!(status.message().contains("records[0].received_at"), "{}", status.message());

    // Only the Valkey side is fed here (the RabbitMQ writer).
    let valkey = stack.valkey_counted(1).await;
    assert_eq!(valkey.total, 1, "the canonical spelling once; every other spelling nowhere");
}
