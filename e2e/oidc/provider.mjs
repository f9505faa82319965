// The OpenID provider of the OIDC e2e tests: npm `oidc-provider` (a certified OpenID Connect
// implementation) on 127.0.0.1, with confidential clients registered and its development
// login and consent pages (any login and password are accepted). Started by e2e/src/oidc.rs.
//
// Environment: PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, POST_LOGOUT_REDIRECT_URI (each a
// comma-separated list),
// ACCESS_TOKEN_TTL (seconds). Prints "ready <issuer>" once it listens.
//
// Two clients are registered: CLIENT_ID authenticating with client_secret_basic and
// `${CLIENT_ID}-post` with client_secret_post (same secret and URIs). ID tokens are signed RS256
// with a key made at start (a new `kid` each start: restarting on the same port rotates the
// provider's keys). ID tokens carry the scope claims (email; users whose name starts with `big`
// also a long `groups` list, to make tokens larger than one cookie).
import Provider from 'oidc-provider';
import { generateKeyPairSync, randomBytes } from 'node:crypto';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const accessTtl = Number(process.env.ACCESS_TOKEN_TTL || 3600);

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signing = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(6).toString('hex'), alg: 'RS256', use: 'sig' };

const client = (id, auth) => ({
  client_id: id,
  client_secret: process.env.CLIENT_SECRET,
  redirect_uris: process.env.REDIRECT_URI.split(','),
  post_logout_redirect_uris: process.env.POST_LOGOUT_REDIRECT_URI.split(','),
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: auth,
});

const provider = new Provider(issuer, {
  clients: [
    client(process.env.CLIENT_ID, 'client_secret_basic'),
    client(`${process.env.CLIENT_ID}-post`, 'client_secret_post'),
  ],
  jwks: { keys: [signing] },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: id,
      email: `${id}@example.com`,
      ...(id.startsWith('big') ? { groups: Array.from({ length: 120 }, (_, i) => `team-${i}-of-the-large-organisation`) } : {}),
    }),
  }),
  claims: { openid: ['sub'], email: ['email', 'groups'] },
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
provider.listen(port, '127.0.0.1', () => console.log(`ready ${issuer} ${signing.kid}`));
