// The OpenID provider of the OIDC e2e tests: npm `oidc-provider` (a certified OpenID Connect
// implementation) on 127.0.0.1, with one confidential client registered and its development
// login and consent pages (any login and password are accepted). Started by e2e/src/oidc.rs.
//
// Environment: PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, POST_LOGOUT_REDIRECT_URI (each a
// comma-separated list),
// ACCESS_TOKEN_TTL (seconds). Prints "ready <issuer>" once it listens.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const accessTtl = Number(process.env.ACCESS_TOKEN_TTL || 3600);

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: process.env.REDIRECT_URI.split(','),
    post_logout_redirect_uris: process.env.POST_LOGOUT_REDIRECT_URI.split(','),
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com` }),
  }),
  claims: { openid: ['sub'], email: ['email'] },
  cookies: { keys: ['wasmesh-e2e-provider-cookie-key'] },
  ttl: { AccessToken: accessTtl, IdToken: 3600, RefreshToken: 86400, Grant: 86400, Session: 86400 },
  issueRefreshToken: async () => true,
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
});
provider.proxy = false;
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(port, '127.0.0.1', () => console.log(`ready ${issuer}`));
