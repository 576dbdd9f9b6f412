//! The generated cluster gRPC code and the shared-secret check every call passes.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

#[allow(
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]
pub mod proto {
    tonic::include_proto!("hapax.cluster.v1");
}

/// The metadata key that carries `cluster.secret`.
pub const SECRET_HEADER: &str = "x-hapax-cluster-secret";

/// The secret as calls carry it, if one is set.
#[derive(Clone, Default)]
pub struct ClusterSecret {
    header: Option<MetadataValue<Ascii>>,
    digest: Option<[u8; 32]>,
}

impl ClusterSecret {
    /// `None` = calls are not authenticated. Fails when the secret cannot travel as metadata.
    pub fn new(secret: Option<&str>) -> Result<Self, String> {
        let Some(secret) = secret else {
            return Ok(Self::default());
        };
        let header = MetadataValue::try_from(secret).map_err(|_| {
            "cluster.secret must not contain control characters: it travels as gRPC metadata"
                .to_owned()
        })?;
        Ok(Self {
            header: Some(header),
            digest: Some(Sha256::digest(secret.as_bytes()).into()),
        })
    }

    /// Adds the secret to an outgoing call.
    pub fn attach<T>(&self, request: &mut Request<T>) {
        if let Some(header) = &self.header {
            request.metadata_mut().insert(SECRET_HEADER, header.clone());
        }
    }

    /// Checks an incoming call in constant time (digests of equal length are compared).
    pub fn verify<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.digest else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get(SECRET_HEADER)
            .map(|v| Sha256::digest(v.as_bytes()));
        match given {
            Some(given) if bool::from(given.as_slice().ct_eq(expected.as_slice())) => Ok(()),
            _ => Err(Status::unauthenticated("missing or wrong cluster secret")),
        }
    }
}

impl tonic::service::Interceptor for ClusterSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.verify(&request)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_passes() {
        let server = ClusterSecret::new(Some("0123456789abcdef")).unwrap_or_default();
        let mut good = Request::new(());
        server.attach(&mut good);
        assert!(server.verify(&good).is_ok());
        let mut wrong = Request::new(());
        ClusterSecret::new(Some("another-secret-!!"))
            .unwrap_or_default()
            .attach(&mut wrong);
        assert_eq!(
            server.verify(&wrong).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            server.verify(&Request::new(())).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        assert!(
            ClusterSecret::default().verify(&Request::new(())).is_ok(),
            "no secret configured: open"
        );
        assert!(ClusterSecret::new(Some("line\nbreak-secret-0123")).is_err());
    }
}
