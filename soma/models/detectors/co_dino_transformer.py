"""The Co-DINO transformer, built from mmdet 3.3's new-style DINO layers.

Config style (decision for this project): mmdet 3.x. ``encoder``/``decoder`` take the
``num_layers`` + ``layer_cfg`` dicts of mmdet 3.3's ``DeformableDetrTransformerEncoder`` /
``DinoTransformerDecoder`` (``self_attn_cfg``, ``cross_attn_cfg``, ``ffn_cfg``), not the
legacy mmcv ``transformerlayers``/``attn_cfgs``/``operation_order`` style of the original
release; the computation is the same (post-norm layers, multi-scale deformable attention).

What the transformer does (facts of Co-DINO):

* main branch: encoder on the flattened levels; two-stage top-k proposals from the
  encoder's class scores; learned content queries plus the detached top-k boxes ("mixed
  selection"); optional denoising queries in front; the decoder refines boxes layer by layer;
* auxiliary branch (:meth:`forward_aux`, training only): the positives of an auxiliary head
  become extra queries of the same decoder: reference = the positive box, content query =
  ``LayerNorm(Linear(sine embedding of the box))`` with one Linear+LayerNorm per auxiliary
  head (plus a projection of the pooled RoI/anchor features when ``with_coord_feat``);
  memory = the encoder output, no self-attention mask.

Every parameter is initialised in ``__init__`` (xavier for encoder/decoder matrices,
MSDeformAttn's own init, normal for ``level_embed`` and the content queries) and again by
``init_weights()``, so no path leaves ``torch.Tensor`` memory uninitialised.
"""
import torch
import torch.nn.functional as F
from mmcv.ops import MultiScaleDeformableAttention
from mmdet.models.detectors.deformable_detr import DeformableDETR
from mmdet.models.layers import (DeformableDetrTransformerEncoder, DinoTransformerDecoder,
                                 SinePositionalEncoding)
from mmdet.models.layers.transformer import coordinate_to_encoding, inverse_sigmoid
from mmengine.model import BaseModule
from torch import nn

from soma.registry import DET_MODELS


class CoDinoTransformerDecoder(DinoTransformerDecoder):
    """mmdet's ``DinoTransformerDecoder`` with the sine embedding sized by ``embed_dims``.

    mmdet 3.3 always encodes the reference boxes with 128 features per coordinate, which
    only fits ``embed_dims=256``; here it is ``embed_dims // 2`` (the same at 256).
    """

    def forward(self, query, value, key_padding_mask, self_attn_mask, reference_points,
                spatial_shapes, level_start_index, valid_ratios, reg_branches, **kwargs):
        intermediate, intermediate_refs = [], [reference_points]
        for lid, layer in enumerate(self.layers):
            ref_input = reference_points[:, :, None] * torch.cat(
                [valid_ratios, valid_ratios], -1)[:, None]
            sine = coordinate_to_encoding(ref_input[:, :, 0, :], num_feats=self.embed_dims // 2)
            query = layer(
                query, query_pos=self.ref_point_head(sine), value=value,
                key_padding_mask=key_padding_mask, self_attn_mask=self_attn_mask,
                spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                valid_ratios=valid_ratios, reference_points=ref_input, **kwargs)
            new_refs = (reg_branches[lid](query)
                        + inverse_sigmoid(reference_points, eps=1e-3)).sigmoid()
            reference_points = new_refs.detach()
            intermediate.append(self.norm(query))
            intermediate_refs.append(new_refs)  # "look forward twice": not detached
        return torch.stack(intermediate), torch.stack(intermediate_refs)


@DET_MODELS.register_module(name='SoMACoDinoTransformer')
class CoDinoTransformer(BaseModule):
    """Encoder + decoder of Co-DINO with positive-query support (see module docstring)."""

    def __init__(self, encoder, decoder, positional_encoding, num_queries=900,
                 num_feature_levels=5, num_co_heads=2, with_coord_feat=False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        decoder = dict(decoder)
        decoder.setdefault('post_norm_cfg', None)
        decoder['return_intermediate'] = True
        self.positional_encoding = SinePositionalEncoding(**positional_encoding)
        self.encoder = DeformableDetrTransformerEncoder(**encoder)
        self.decoder = CoDinoTransformerDecoder(**decoder)
        self.embed_dims = self.encoder.embed_dims
        if self.positional_encoding.num_feats * 2 != self.embed_dims:
            raise ValueError(
                f'positional_encoding.num_feats must be embed_dims / 2 = {self.embed_dims // 2}, '
                f'got {self.positional_encoding.num_feats}')
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.num_co_heads = num_co_heads
        self.with_coord_feat = with_coord_feat

        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, self.embed_dims))
        self.memory_trans_fc = nn.Linear(self.embed_dims, self.embed_dims)
        self.memory_trans_norm = nn.LayerNorm(self.embed_dims)
        self.query_embedding = nn.Embedding(num_queries, self.embed_dims)
        self.aux_pos_trans = nn.ModuleList(
            nn.Linear(self.embed_dims * 2, self.embed_dims) for _ in range(num_co_heads))
        self.aux_pos_trans_norm = nn.ModuleList(
            nn.LayerNorm(self.embed_dims) for _ in range(num_co_heads))
        if with_coord_feat:
            self.pos_feats_trans = nn.ModuleList(
                nn.Linear(self.embed_dims, self.embed_dims) for _ in range(num_co_heads))
            self.pos_feats_norm = nn.ModuleList(
                nn.LayerNorm(self.embed_dims) for _ in range(num_co_heads))
        self.init_weights()

    def init_weights(self):
        """Xavier for the encoder/decoder matrices, then MSDeformAttn's own init."""
        for coder in (self.encoder, self.decoder):
            for p in coder.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.init_weights()
        nn.init.xavier_uniform_(self.memory_trans_fc.weight)
        nn.init.zeros_(self.memory_trans_fc.bias)
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.query_embedding.weight)
        self._is_init = True

    # ----------------------------------------------------------------- shared steps
    def flatten_levels(self, mlvl_feats, batch_img_metas, with_pos=True):
        """Flatten the levels; masks from ``img_shape`` inside ``batch_input_shape``."""
        bs = mlvl_feats[0].size(0)
        input_h, input_w = batch_img_metas[0]['batch_input_shape']
        if all(tuple(m['img_shape'][:2]) == (input_h, input_w) for m in batch_img_metas):
            # nothing padded (always so with use_lsj): built from the batch size alone, so
            # an exported graph (soma.deploy) keeps a free batch dimension
            masks = mlvl_feats[0].new_zeros((bs, input_h, input_w))
        else:
            masks = mlvl_feats[0].new_ones((bs, input_h, input_w))
            for i, meta in enumerate(batch_img_metas):
                img_h, img_w = meta['img_shape'][:2]
                masks[i, :img_h, :img_w] = 0
        feats, poss, mask_flat, shapes, ratios = [], [], [], [], []
        for lvl, feat in enumerate(mlvl_feats):
            mask = F.interpolate(masks[None], size=feat.shape[-2:]).to(torch.bool)[0]
            feats.append(feat.flatten(2).transpose(1, 2))
            if with_pos:
                pos = self.positional_encoding(mask).flatten(2).transpose(1, 2)
                poss.append(pos + self.level_embed[lvl].view(1, 1, -1))
            mask_flat.append(mask.flatten(1))
            shapes.append(feat.shape[-2:])
            ratios.append(DeformableDETR.get_valid_ratio(mask))
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=feats[0].device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1, )),
                                       spatial_shapes.prod(1).cumsum(0)[:-1]))
        return dict(
            feat=torch.cat(feats, 1), feat_pos=torch.cat(poss, 1) if with_pos else None,
            mask=torch.cat(mask_flat, 1), spatial_shapes=spatial_shapes,
            level_start_index=level_start_index, valid_ratios=torch.stack(ratios, 1))

    def _decode(self, query, reference_points, memory, levels, reg_branches, self_attn_mask):
        return self.decoder(
            query=query, value=memory, key_padding_mask=levels['mask'],
            self_attn_mask=self_attn_mask, reference_points=reference_points,
            spatial_shapes=levels['spatial_shapes'],
            level_start_index=levels['level_start_index'],
            valid_ratios=levels['valid_ratios'], reg_branches=reg_branches)

    # ------------------------------------------------------------------ main branch
    def forward(self, mlvl_feats, batch_img_metas, cls_branches, reg_branches,
                dn_label_query=None, dn_bbox_query=None, dn_mask=None):
        """Return ``hidden_states, references, topk_score, topk_coords, memory, levels``."""
        levels = self.flatten_levels(mlvl_feats, batch_img_metas)
        num_tokens = levels['feat'].shape[1]
        if num_tokens < self.num_queries:
            raise ValueError(f'num_queries={self.num_queries} exceeds the {num_tokens} '
                             f'feature tokens of this input: use fewer queries or larger images')
        memory = self.encoder(
            query=levels['feat'], query_pos=levels['feat_pos'], key_padding_mask=levels['mask'],
            spatial_shapes=levels['spatial_shapes'],
            level_start_index=levels['level_start_index'],
            valid_ratios=levels['valid_ratios'])

        num_layers = self.decoder.num_layers
        output_memory, output_proposals = DeformableDETR.gen_encoder_output_proposals(
            self, memory, levels['mask'], levels['spatial_shapes'])
        enc_class = cls_branches[num_layers](output_memory)
        enc_coord_unact = reg_branches[num_layers](output_memory) + output_proposals
        topk = torch.topk(enc_class.max(-1)[0], k=self.num_queries, dim=1)[1]
        topk_score = torch.gather(
            enc_class, 1, topk.unsqueeze(-1).repeat(1, 1, enc_class.shape[-1]))
        topk_coords_unact = torch.gather(enc_coord_unact, 1, topk.unsqueeze(-1).repeat(1, 1, 4))
        topk_coords = topk_coords_unact.sigmoid()
        topk_coords_unact = topk_coords_unact.detach()

        bs = memory.shape[0]
        query = self.query_embedding.weight[None].expand(bs, -1, -1)
        reference = topk_coords_unact
        if dn_label_query is not None:
            query = torch.cat([dn_label_query, query], dim=1)
            reference = torch.cat([dn_bbox_query, reference], dim=1)
        hidden_states, references = self._decode(
            query, reference.sigmoid(), memory, levels, reg_branches, dn_mask)
        return hidden_states, references, topk_score, topk_coords, memory, levels

    # ------------------------------------------------------------- auxiliary branch
    def forward_aux(self, mlvl_feats, batch_img_metas, coords, head_idx, reg_branches,
                    pos_feats=None):
        """Decode the positives of auxiliary head ``head_idx``.

        ``mlvl_feats`` are the encoder's output maps (the memory), ``coords`` the positive
        boxes, normalised cxcywh, shape (bs, num_pos, 4).
        """
        if not 0 <= head_idx < self.num_co_heads:
            raise ValueError(f'auxiliary head index {head_idx} out of range: the transformer '
                             f'was built with num_co_heads={self.num_co_heads}')
        levels = self.flatten_levels(mlvl_feats, batch_img_metas, with_pos=False)
        # as the release: the boxes are the reference points unclamped (the decoder takes
        # inverse_sigmoid(eps=1e-3) of them); their sine embedding uses mmdet's eps 1e-5
        pos_embed = DeformableDETR.get_proposal_pos_embed(
            inverse_sigmoid(coords, eps=1e-5), num_pos_feats=self.embed_dims // 2)
        query = self.aux_pos_trans_norm[head_idx](self.aux_pos_trans[head_idx](pos_embed))
        if self.with_coord_feat:
            if pos_feats is None:
                raise ValueError('with_coord_feat=True needs the features of the positives')
            query = query + self.pos_feats_norm[head_idx](
                self.pos_feats_trans[head_idx](pos_feats))
        return self._decode(query, coords, levels['feat'], levels, reg_branches, None)

    def memory_to_maps(self, memory, spatial_shapes):
        """Reshape the encoder memory (bs, N, C) back to one contiguous map per level.

        Contiguous as in the release: mmcv's RoIAlign reads the raw storage as NCHW, so a
        strided view of the memory would be pooled from (and back-propagated to) the wrong
        positions.
        """
        bs, _, c = memory.shape
        sizes = [int(h) * int(w) for h, w in spatial_shapes]
        chunks = memory.split(sizes, dim=1)
        return [chunk.transpose(1, 2).reshape(bs, c, int(h), int(w)).contiguous()
                for chunk, (h, w) in zip(chunks, spatial_shapes)]


__all__ = ['CoDinoTransformer', 'CoDinoTransformerDecoder']
