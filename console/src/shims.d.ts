// The client loads `ws` only in Node (src/socket.ts); in the browser its package.json's
// `browser` field leaves it out, so the console neither installs nor types it.
declare module "ws";

// Styles are bundled by vite.
declare module "*.css";
