// @tether-game/client: a TypeScript client for Tether game servers.
export {
  MAX_REDIRECTS_IN_A_ROW,
  TetherClient,
  TooManyPendingInputs,
  type Auth,
  type ClientOptions,
  type ClientStats,
  type LinkState,
  type WebSocketFactory,
  type WebSocketLike,
  type Welcomed,
} from './client.js';
export { FrameError, FrameReader, frame, MAX_CLIENT_PAYLOAD } from './frame.js';
export * from './gen/engine_pb.js';
export * from './gen/tether_pb.js';
export { create, fromBinary, toBinary } from '@bufbuild/protobuf';
