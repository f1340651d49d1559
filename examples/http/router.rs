//! A route map: method and path to a handler closure, as `httppool` served
//! its HTTP handlers. A path with no route is `404`; a path with routes for
//! other methods is `405` with `Allow`. `HEAD` is served by the `GET` route.

use super::request::Request;
use super::response::Response;

/// A route's handler.
pub type Route = Box<dyn Fn(&Request<'_, '_>) -> Response + Send + Sync>;

/// Routes by exact method and path.
#[derive(Default)]
pub struct Router {
    routes: Vec<(&'static str, &'static str, Route)>,
}

impl Router {
    /// A router without routes.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds the route `method path`.
    pub fn route(
        mut self,
        method: &'static str,
        path: &'static str,
        handler: impl Fn(&Request<'_, '_>) -> Response + Send + Sync + 'static,
    ) -> Router {
        self.routes.push((method, path, Box::new(handler)));
        self
    }

    /// The response of the route for `req`, or `404`/`405`.
    pub fn dispatch(&self, req: &Request<'_, '_>) -> Response {
        let method = if req.method == "HEAD" {
            "GET"
        } else {
            req.method
        };
        let mut allowed = Vec::new();
        for (m, path, handler) in &self.routes {
            if *path != req.path {
                continue;
            }
            if *m == method {
                return handler(req);
            }
            allowed.push(*m);
            if *m == "GET" {
                allowed.push("HEAD");
            }
        }
        if allowed.is_empty() {
            return Response::status(404);
        }
        Response::status(405).header("Allow", allowed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn request<'a>(method: &'a str, path: &'a str) -> Request<'a, 'static> {
        Request {
            method,
            path,
            headers: &[],
            body: Cow::Borrowed(b""),
            keep_alive: true,
            http10: false,
        }
    }

    #[test]
    fn routes_404_and_405() {
        let router = Router::new()
            .route("GET", "/", |_| Response::text(200, "root"))
            .route("POST", "/echo", |r| Response::text(200, r.body.to_vec()));
        assert_eq!(router.dispatch(&request("GET", "/")).body, b"root");
        assert_eq!(router.dispatch(&request("HEAD", "/")).status, 200);
        assert_eq!(router.dispatch(&request("GET", "/nope")).status, 404);
        let refused = router.dispatch(&request("DELETE", "/"));
        assert_eq!(refused.status, 405);
        assert_eq!(refused.headers, [("Allow", "GET, HEAD".to_string())]);
    }
}
