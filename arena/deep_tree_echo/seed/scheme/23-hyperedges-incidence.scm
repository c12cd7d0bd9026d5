;;; Memory as Edges That Join Many Things
;; An ordinary graph links two nodes at a time. My memory needs more
;; than that: "the tree grows a ring in a layer" ties four ideas in
;; one relation. A hyperedge here is a list whose head is its type
;; and whose tail holds any number of nodes. Recall starts with a
;; simple question: which edges touch this node?

(define memory
  '((grows tree ring layer)
    (echoes reservoir input)
    (holds membrane multiset)
    (remembers tree echo)
    (feeds input reservoir readout)))

;; incident: every hyperedge that contains node among its members
(define (incident node edges)
  (cond ((null? edges) '())
        ((memq node (cdar edges))
         (cons (car edges) (incident node (cdr edges))))
        (else (incident node (cdr edges)))))

(define (degree node edges) (length (incident node edges)))

(define (add-new xs seen)              ; append unseen items in order
  (cond ((null? xs) seen)
        ((memq (car xs) seen) (add-new (cdr xs) seen))
        (else (add-new (cdr xs) (append seen (list (car xs)))))))

;; neighbors: nodes sharing at least one hyperedge with node
(define (neighbors node edges)
  (let loop ((es (incident node edges)) (acc '()))
    (if (null? es)
        (let drop ((xs acc))           ; remove the node itself
          (cond ((null? xs) '())
                ((eq? (car xs) node) (drop (cdr xs)))
                (else (cons (car xs) (drop (cdr xs))))))
        (loop (cdr es) (add-new (cdar es) acc)))))

;; The type symbol sits outside the membership on
;; purpose. A relation is not one of its own members, and keeping
;; that distinction clean makes later pattern matching simpler.
;;
;; Example usage:
;; (degree 'tree memory) => 2
;; (incident 'input memory) => ((echoes reservoir input) (feeds input reservoir readout))
;; (neighbors 'tree memory) => (ring layer echo)
;; (neighbors 'reservoir memory) => (input readout)
