//! `viaduct.v1.Users`: people, for admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    DeleteUserResponse, GetUserRequest, ListUsersRequest, ListUsersResponse, User, users_server::Users,
};

use crate::{access, auth::Auth, error::Error};

/// The Users service.
pub struct UsersApi {
    auth: Arc<Auth>,
}

impl UsersApi {
    /// The service over `auth`'s users.
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

#[tonic::async_trait]
impl Users for UsersApi {
    async fn create(&self, req: Request<User>) -> Result<Response<User>, Status> {
        access::of(&req)?.target(format!("user `{}`", req.get_ref().name));
        let u = req.into_inner();
        let rec = self.auth.users().create(&u).await?;
        Ok(Response::new(self.auth.users().to_proto(&u.name, &rec)))
    }

    async fn get(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let name = req.into_inner().name;
        let users = self.auth.users();
        let rec = users.record(&name)?.ok_or_else(|| Error::not_found(format!("no user `{name}`")))?;
        Ok(Response::new(users.to_proto(&name, &rec)))
    }

    async fn list(&self, _req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        let users = self.auth.users();
        let users = users.list()?.iter().map(|(n, r)| users.to_proto(n, r)).collect();
        Ok(Response::new(ListUsersResponse { users }))
    }

    async fn update(&self, req: Request<User>) -> Result<Response<User>, Status> {
        access::of(&req)?.target(format!("user `{}`", req.get_ref().name));
        let u = req.into_inner();
        let rec = self.auth.users().update(&u).await?;
        Ok(Response::new(self.auth.users().to_proto(&u.name, &rec)))
    }

    async fn delete(&self, req: Request<GetUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        access::of(&req)?.target(format!("user `{}`", req.get_ref().name));
        self.auth.users().delete(&req.into_inner().name).await?;
        self.auth.revoked();
        Ok(Response::new(DeleteUserResponse {}))
    }
}
