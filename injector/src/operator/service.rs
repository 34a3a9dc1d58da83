//! The RPCs of `dapr.proto.operator.v1.Operator`, answered from the shared [`Cache`]. Every RPC
//! first checks that the caller's SPIFFE namespace is the request's `namespace`
//! (pkg/operator/api/authz/authz.go). Update streams read the cache's broadcast of changes:
//! a stream that falls [`super::cache::CHANGE_BUFFER`] changes behind is closed with
//! `ResourceExhausted` (daprd reconnects and lists again), so a slow sidecar never holds up
//! the others or grows the operator's memory.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use dapr_identity::SpiffeId;
use dapr_proto::operator::v1 as pb;
use futures::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::Error;
use super::cache::{Cache, Change, Changed, Kind, Object};
use super::secrets;

/// The verified SPIFFE id of the peer of a connection (tonic's connect info).
#[derive(Debug, Clone)]
pub struct PeerId(pub Option<Arc<SpiffeId>>);

/// The operator service. Cloned into every open stream, so it is one pointer.
#[derive(Clone)]
pub struct Operator {
    shared: Arc<Shared>,
}

struct Shared {
    cache: Arc<Cache>,
    client: kube::Client,
}

impl Operator {
    pub fn new(cache: Arc<Cache>, client: kube::Client) -> Self {
        Operator {
            shared: Arc::new(Shared { cache, client }),
        }
    }

    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Arc<Object>, Error> {
        self.synced(kind)?;
        self.shared
            .cache
            .get(kind, namespace, name)
            .ok_or_else(|| Error::NotFound {
                kind: kind.name(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    }

    fn list(&self, kind: Kind, namespace: &str) -> Result<Vec<Bytes>, Error> {
        self.synced(kind)?;
        Ok(self
            .shared
            .cache
            .list(kind, namespace)
            .into_iter()
            .map(|o| o.encoded.clone())
            .collect())
    }

    fn synced(&self, kind: Kind) -> Result<(), Error> {
        if self.shared.cache.is_synced(kind) {
            Ok(())
        } else {
            Err(Error::NotSynced { kind: kind.name() })
        }
    }

    /// The change stream of `kind` in `namespace` ([`change_stream`]).
    fn updates<T, F, Fut>(&self, kind: Kind, namespace: String, event: F) -> Events<T>
    where
        T: Send + 'static,
        F: Fn(Changed) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<T>> + Send,
    {
        change_stream(self.shared.cache.subscribe(kind), namespace, event)
    }
}

/// The changes `changes` brings for `namespace`, each turned into the RPC's event by `event`
/// (which may drop one by answering `None`); ends with `ResourceExhausted` once it has fallen
/// too far behind.
pub fn change_stream<T, F, Fut>(
    changes: broadcast::Receiver<Changed>,
    namespace: String,
    event: F,
) -> Events<T>
where
    T: Send + 'static,
    F: Fn(Changed) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<T>> + Send,
{
    let state = (changes, namespace, event, false);
    Box::pin(futures::stream::unfold(
        state,
        |(mut changes, namespace, event, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match changes.recv().await {
                    Ok(changed) if changed.object.namespace == namespace => {
                        if let Some(item) = event(changed).await {
                            return Some((Ok(item), (changes, namespace, event, false)));
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        warn!(%namespace, missed, "closing a change stream that fell behind");
                        let status = Status::from(Error::Lagged { missed });
                        return Some((Err(status), (changes, namespace, event, true)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    ))
}

/// A server stream of events.
pub type Events<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `ResourceEventType` of a change.
pub fn event_type(change: Change) -> pb::ResourceEventType {
    match change {
        Change::Created => pb::ResourceEventType::Created,
        Change::Updated => pb::ResourceEventType::Updated,
        Change::Deleted => pb::ResourceEventType::Deleted,
    }
}

/// The caller's SPIFFE id, which must be in `namespace`.
pub fn authorize<T>(request: &Request<T>, namespace: &str) -> Result<Arc<SpiffeId>, Error> {
    let caller = request
        .extensions()
        .get::<PeerId>()
        .and_then(|peer| peer.0.clone())
        .ok_or(Error::NoIdentity)?;
    check_namespace(&caller, namespace)?;
    Ok(caller)
}

/// The authorisation rule alone: a caller reads only its own namespace.
pub fn check_namespace(caller: &SpiffeId, namespace: &str) -> Result<(), Error> {
    if caller.namespace() == namespace {
        Ok(())
    } else {
        Err(Error::OtherNamespace {
            caller: caller.namespace().to_owned(),
            requested: namespace.to_owned(),
        })
    }
}

/// Logs a refusal once and turns it into the wire status.
fn refused(rpc: &'static str, namespace: &str, error: Error) -> Status {
    warn!(rpc, %namespace, "refused: {error}");
    error.into()
}

impl Operator {
    /// An object as served: Secret references filled ([`secrets`]). The lookup's future is
    /// boxed: every open stream holds room for this future, and the Kubernetes call inside
    /// would otherwise make each of them kilobytes larger.
    async fn served(&self, kind: Kind, object: &Object) -> Result<Bytes, Error> {
        let lookup = secrets::resolve(&self.shared.client, kind, &object.namespace, &object.json);
        match Box::pin(lookup).await? {
            None => Ok(object.encoded.clone()),
            Some(resolved) => Ok(Bytes::from(
                serde_json::to_vec(&resolved).unwrap_or_default(),
            )),
        }
    }

    /// Every object of `kind` in `namespace` that `keep` admits, as served; the first Secret
    /// that cannot be read fails the whole list, as upstream.
    async fn served_list(
        &self,
        kind: Kind,
        namespace: &str,
        keep: impl Fn(&Object) -> bool,
    ) -> Result<Vec<Bytes>, Error> {
        self.synced(kind)?;
        let mut served = Vec::new();
        for object in self.shared.cache.list(kind, namespace) {
            if keep(&object) {
                served.push(self.served(kind, &object).await?);
            } else {
                debug!(kind = kind.name(), name = %object.name, "out of the caller's scope");
            }
        }
        Ok(served)
    }

    /// The change stream of `kind` with Secret references filled; a change whose Secret
    /// cannot be read is skipped with a warning (the next list carries it).
    fn served_updates<T, F>(&self, kind: Kind, namespace: String, event: F) -> Events<T>
    where
        T: Send + 'static,
        F: Fn(Bytes, i32) -> T + Copy + Send + Sync + 'static,
    {
        let operator = self.clone();
        self.updates(kind, namespace, move |changed: Changed| {
            let operator = operator.clone();
            async move {
                match operator.served(kind, &changed.object).await {
                    Ok(bytes) => Some(event(bytes, event_type(changed.change) as i32)),
                    Err(e) => {
                        warn!(
                            kind = kind.name(),
                            namespace = %changed.object.namespace,
                            name = %changed.object.name,
                            "change not sent: {e}"
                        );
                        None
                    }
                }
            }
        })
    }
}

#[tonic::async_trait]
impl pb::operator_server::Operator for Operator {
    type ComponentUpdateStream = Events<pb::ComponentUpdateEvent>;
    type SubscriptionUpdateStream = Events<pb::SubscriptionUpdateEvent>;
    type HTTPEndpointUpdateStream = Events<pb::HttpEndpointUpdateEvent>;
    type MCPServerUpdateStream = Events<pb::McpServerUpdateEvent>;
    type ConfigurationUpdateStream = Events<pb::ConfigurationUpdateEvent>;
    type ResiliencyUpdateStream = Events<pb::ResiliencyUpdateEvent>;
    type WorkflowAccessPolicyUpdateStream = Events<pb::WorkflowAccessPolicyUpdateEvent>;

    async fn component_update(
        &self,
        request: Request<pb::ComponentUpdateRequest>,
    ) -> Result<Response<Self::ComponentUpdateStream>, Status> {
        let namespace = request.get_ref().namespace.clone();
        authorize(&request, &namespace).map_err(|e| refused("ComponentUpdate", &namespace, e))?;
        info!(%namespace, "sidecar connected for component updates");
        Ok(Response::new(self.served_updates(
            Kind::Component,
            namespace,
            |component, r#type| pb::ComponentUpdateEvent { component, r#type },
        )))
    }

    async fn list_components(
        &self,
        request: Request<pb::ListComponentsRequest>,
    ) -> Result<Response<pb::ListComponentResponse>, Status> {
        let namespace = request.get_ref().namespace.clone();
        let caller = authorize(&request, &namespace)
            .map_err(|e| refused("ListComponents", &namespace, e))?;
        let components = self
            .served_list(Kind::Component, &namespace, |object| {
                object.in_scope_of(caller.app_id())
            })
            .await
            .map_err(|e| refused("ListComponents", &namespace, e))?;
        Ok(Response::new(pb::ListComponentResponse { components }))
    }

    async fn get_configuration(
        &self,
        request: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::GetConfigurationResponse>, Status> {
        let pb::GetConfigurationRequest { name, namespace } = request.get_ref().clone();
        authorize(&request, &namespace).map_err(|e| refused("GetConfiguration", &namespace, e))?;
        let object = self
            .get(Kind::Configuration, &namespace, &name)
            .map_err(|e| refused("GetConfiguration", &namespace, e))?;
        let configuration = self
            .served(Kind::Configuration, &object)
            .await
            .map_err(|e| refused("GetConfiguration", &namespace, e))?;
        Ok(Response::new(pb::GetConfigurationResponse {
            configuration,
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<()>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        // As upstream: the namespace-less request is V2 with an empty namespace.
        let (metadata, extensions, ()) = request.into_parts();
        self.list_subscriptions_v2(Request::from_parts(
            metadata,
            extensions,
            pb::ListSubscriptionsRequest::default(),
        ))
        .await
    }

    async fn get_resiliency(
        &self,
        request: Request<pb::GetResiliencyRequest>,
    ) -> Result<Response<pb::GetResiliencyResponse>, Status> {
        let pb::GetResiliencyRequest { name, namespace } = request.get_ref().clone();
        authorize(&request, &namespace).map_err(|e| refused("GetResiliency", &namespace, e))?;
        let object = self
            .get(Kind::Resiliency, &namespace, &name)
            .map_err(|e| refused("GetResiliency", &namespace, e))?;
        Ok(Response::new(pb::GetResiliencyResponse {
            resiliency: object.encoded.clone(),
        }))
    }

    async fn list_resiliency(
        &self,
        request: Request<pb::ListResiliencyRequest>,
    ) -> Result<Response<pb::ListResiliencyResponse>, Status> {
        let namespace = request.get_ref().namespace.clone();
        authorize(&request, &namespace).map_err(|e| refused("ListResiliency", &namespace, e))?;
        let resiliencies = self
            .list(Kind::Resiliency, &namespace)
            .map_err(|e| refused("ListResiliency", &namespace, e))?;
        Ok(Response::new(pb::ListResiliencyResponse { resiliencies }))
    }

    async fn list_subscriptions_v2(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let namespace = request.get_ref().namespace.clone();
        authorize(&request, &namespace)
            .map_err(|e| refused("ListSubscriptionsV2", &namespace, e))?;
        let subscriptions = self
            .list(Kind::Subscription, &namespace)
            .map_err(|e| refused("ListSubscriptionsV2", &namespace, e))?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
        }))
    }

    async fn subscription_update(
        &self,
        request: Request<pb::SubscriptionUpdateRequest>,
    ) -> Result<Response<Self::SubscriptionUpdateStream>, Status> {
        let namespace = request.get_ref().namespace.clone();
        authorize(&request, &namespace)
            .map_err(|e| refused("SubscriptionUpdate", &namespace, e))?;
        Ok(Response::new(self.updates(
            Kind::Subscription,
            namespace,
            |changed: Changed| async move {
                Some(pb::SubscriptionUpdateEvent {
                    subscription: changed.object.encoded.clone(),
                    r#type: event_type(changed.change) as i32,
                })
            },
        )))
    }

    async fn list_http_endpoints(
        &self,
        request: Request<pb::ListHttpEndpointsRequest>,
    ) -> Result<Response<pb::ListHttpEndpointsResponse>, Status> {
        let namespace = request.get_ref().namespace.clone();
        authorize(&request, &namespace).map_err(|e| refused("ListHTTPEndpoints", &namespace, e))?;
        let http_endpoints = self
            .served_list(Kind::HttpEndpoint, &namespace, |_| true)
            .await
            .map_err(|e| refused("ListHTTPEndpoints", &namespace, e))?;
        Ok(Response::new(pb::ListHttpEndpointsResponse {
            http_endpoints,
        }))
    }

    async fn http_endpoint_update(
        &self,
        request: Request<pb::HttpEndpointUpdateRequest>,
    ) -> Result<Response<Self::HTTPEndpointUpdateStream>, Status> {
        let namespace = request.get_ref().namespace.clone();
        authorize(&request, &namespace)
            .map_err(|e| refused("HTTPEndpointUpdate", &namespace, e))?;
        Ok(Response::new(self.served_updates(
            Kind::HttpEndpoint,
            namespace,
            |http_endpoints, r#type| pb::HttpEndpointUpdateEvent {
                http_endpoints,
                r#type,
            },
        )))
    }

    async fn list_mcp_servers(
        &self,
        _request: Request<pb::ListMcpServersRequest>,
    ) -> Result<Response<pb::ListMcpServersResponse>, Status> {
        Err(Error::Unimplemented("ListMCPServers").into())
    }

    async fn mcp_server_update(
        &self,
        _request: Request<pb::McpServerUpdateRequest>,
    ) -> Result<Response<Self::MCPServerUpdateStream>, Status> {
        Err(Error::Unimplemented("MCPServerUpdate").into())
    }

    async fn configuration_update(
        &self,
        request: Request<pb::ConfigurationUpdateRequest>,
    ) -> Result<Response<Self::ConfigurationUpdateStream>, Status> {
        let namespace = request.get_ref().namespace.clone();
        authorize(&request, &namespace)
            .map_err(|e| refused("ConfigurationUpdate", &namespace, e))?;
        Ok(Response::new(self.served_updates(
            Kind::Configuration,
            namespace,
            |configuration, r#type| pb::ConfigurationUpdateEvent {
                configuration,
                r#type,
            },
        )))
    }

    async fn resiliency_update(
        &self,
        request: Request<pb::ResiliencyUpdateRequest>,
    ) -> Result<Response<Self::ResiliencyUpdateStream>, Status> {
        let namespace = request.get_ref().namespace.clone();
        authorize(&request, &namespace).map_err(|e| refused("ResiliencyUpdate", &namespace, e))?;
        Ok(Response::new(self.updates(
            Kind::Resiliency,
            namespace,
            |changed: Changed| async move {
                Some(pb::ResiliencyUpdateEvent {
                    resiliency: changed.object.encoded.clone(),
                    r#type: event_type(changed.change) as i32,
                })
            },
        )))
    }

    async fn list_workflow_access_policy(
        &self,
        _request: Request<pb::ListWorkflowAccessPolicyRequest>,
    ) -> Result<Response<pb::ListWorkflowAccessPolicyResponse>, Status> {
        Err(Error::Unimplemented("ListWorkflowAccessPolicy").into())
    }

    async fn workflow_access_policy_update(
        &self,
        _request: Request<pb::WorkflowAccessPolicyUpdateRequest>,
    ) -> Result<Response<Self::WorkflowAccessPolicyUpdateStream>, Status> {
        Err(Error::Unimplemented("WorkflowAccessPolicyUpdate").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_reads_only_its_own_namespace() {
        let caller = SpiffeId::new("cluster.local", "shop", "orders").expect("id");
        assert!(check_namespace(&caller, "shop").is_ok());
        for other in ["billing", "", "shop2"] {
            let refused = check_namespace(&caller, other).expect_err(other);
            assert_eq!(
                Status::from(refused).code(),
                tonic::Code::PermissionDenied,
                "{other}"
            );
        }
    }

    fn object(namespace: &str, name: &str, version: u32) -> super::super::cache::Object {
        Object::new(
            namespace.into(),
            name.into(),
            serde_json::json!({"metadata": {"name": name, "resourceVersion": version.to_string()}}),
        )
    }

    fn names(changed: Changed) -> std::future::Ready<Option<String>> {
        std::future::ready(Some(changed.object.name.clone()))
    }

    #[tokio::test]
    async fn a_stream_sees_only_its_namespace() {
        use futures::StreamExt;
        let cache = Cache::new();
        let mut stream = change_stream(cache.subscribe(Kind::Configuration), "shop".into(), names);
        cache.apply(Kind::Configuration, object("billing", "other", 1));
        cache.apply(Kind::Configuration, object("shop", "mine", 1));
        let first = stream.next().await.expect("an item").expect("not an error");
        assert_eq!(first, "mine");
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_is_closed_with_resource_exhausted_and_others_go_on() {
        use futures::StreamExt;
        let cache = Cache::new();
        let mut slow = change_stream(cache.subscribe(Kind::Component), "shop".into(), names);
        let mut fast = change_stream(cache.subscribe(Kind::Component), "shop".into(), names);
        for version in 0..super::super::cache::CHANGE_BUFFER as u32 {
            cache.apply(Kind::Component, object("shop", "c", version));
            assert!(fast.next().await.expect("item").is_ok());
        }
        cache.apply(Kind::Component, object("shop", "c", 100_000));
        let closed = slow.next().await.expect("an item").expect_err("lagged");
        assert_eq!(closed.code(), tonic::Code::ResourceExhausted);
        assert!(
            slow.next().await.is_none(),
            "the stream ends after the error"
        );
        assert_eq!(fast.next().await.expect("item").expect("ok"), "c");
    }

    #[test]
    fn a_request_without_a_peer_id_is_unauthenticated() {
        let request = Request::new(());
        assert!(matches!(
            authorize(&request, "shop"),
            Err(Error::NoIdentity)
        ));
        let mut request = Request::new(());
        request.extensions_mut().insert(PeerId(None));
        assert!(matches!(
            authorize(&request, "shop"),
            Err(Error::NoIdentity)
        ));
    }
}
