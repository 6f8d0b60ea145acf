//! Flags for the control-plane API's security, shared by every subcommand that serves
//! it: matchmaker tokens and the SDK secret ([`ApiAuthArgs`]), TLS ([`TlsArgs`]); and
//! `gaia sdk-token`, which prints a game server's SDK token for one started by hand.

use std::path::PathBuf;

/// Who may call the API (docs/architecture.md, Authentication).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ApiAuthArgs {
    /// Bearer token matchmakers must present on /v1/allocations and the fleet reads;
    /// repeat for several (rotation). None: those endpoints are open. Also the token the
    /// loadgen's matchmaker sends (the first).
    #[arg(
        long = "allocator-token",
        env = "GAIA_ALLOCATOR_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub allocator_tokens: Vec<String>,
    /// Secret from which each game server's SDK token is derived (the controller hands
    /// every server its own). Unset: `gaia run` makes a random one.
    #[arg(long, env = "GAIA_SDK_SECRET", hide_env_values = true)]
    pub sdk_secret: Option<String>,
}

impl ApiAuthArgs {
    pub fn apply(&self, config: &mut gaia_embedded::Config) {
        config.matchmaker_tokens = self.allocator_tokens.clone();
        config.sdk_secret = self.sdk_secret.clone();
    }
}

/// HTTPS for the API: both or neither.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain; with --tls-key the API serves HTTPS only. It must name the
    /// address the game servers dial (the listen address).
    #[arg(long, env = "GAIA_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GAIA_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    pub fn files(&self) -> Option<gaia_embedded::TlsFiles> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(gaia_embedded::TlsFiles { cert, key })
    }
}

#[derive(clap::Args, Debug)]
pub struct SdkTokenArgs {
    /// The game server's name.
    #[arg(long)]
    pub name: String,
    /// The control plane's SDK secret.
    #[arg(long, env = "GAIA_SDK_SECRET", hide_env_values = true)]
    pub sdk_secret: String,
}

/// `gaia sdk-token`: the `GAIA_SDK_TOKEN` of server `name`.
pub fn sdk_token(args: &SdkTokenArgs) -> anyhow::Result<String> {
    anyhow::ensure!(!args.sdk_secret.is_empty(), "--sdk-secret (GAIA_SDK_SECRET) must not be empty");
    gaia_api::fleet::check_name("name", &args.name).map_err(|e| anyhow::anyhow!("--name: {}", e.message))?;
    Ok(gaia_api::token::TokenKey::new(args.sdk_secret.as_bytes()).sdk_token(&args.name))
}
